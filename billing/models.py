"""Models for the billing app (see ../shared/DESIGN.md)."""
