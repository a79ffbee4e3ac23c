"""Models for the usage app (see ../shared/DESIGN.md)."""
