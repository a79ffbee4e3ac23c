"""Billable actions are facts: append-only, enforced by the database, not only by convention.

A BEFORE UPDATE trigger refuses any change to a billable_actions row (a correction is a new row;
reconcile rebuilds caches from these rows, so they must never move under it). DELETE stays allowed:
removing an organization's data and test flushes use it.
MariaDB/MySQL only (the production engine); SQLite dev databases skip it.
"""
from django.db import migrations

TRIGGER = "billable_actions_immutable"


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "mysql":
        return
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    schema_editor.execute(
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON billable_actions FOR EACH ROW "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'billable_actions rows are immutable facts; record a correction instead'"
    )


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "mysql":
        return
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")


class Migration(migrations.Migration):
    atomic = False  # DDL (CREATE TRIGGER) cannot run inside a transaction on MySQL/MariaDB
    dependencies = [("usage", "0003_billable_action_filter_indexes")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
