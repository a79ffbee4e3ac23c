"""billable_actions.idempotency_key compares bytes: case-sensitive, trailing spaces significant.

Under the table's utf8mb4_unicode_ci, `run-Ab12`, `run-aB12` and `run-Ab12 ` were one key: the second
and third actions were answered the first one's body and never billed, and a batch holding `K1` and
`k1` failed whole on the unique key. Idempotency keys are opaque strings (as Stripe's are), so the
column gets a binary collation that is also NO PAD - per engine, because the obvious
`utf8mb4_bin` is PAD SPACE on MariaDB and on MySQL 8 (it ignores trailing spaces):
  MariaDB (10.2+)   utf8mb4_nopad_bin
  MySQL (8.0.17+)   utf8mb4_0900_bin
SQLite (make run) needs nothing: its default BINARY collation compares bytes, spaces included.

The model does not carry the collation (`db_collation` would be one name for every engine, and
SQLite knows neither): an AlterField of this column must re-apply it - usage/tests/test_idempotency.py
checks the column's collation, so a migration that drops it fails the suite.
Making a key column finer never breaks the unique index (keys distinct before stay distinct).
"""
from django.db import migrations

TABLE = "billable_actions"
COLUMN = "idempotency_key"
LENGTH = 255  # usage.models.IDEMPOTENCY_KEY_MAX_LENGTH when this migration was written


def binary_nopad_collation(connection) -> str:
    if connection.mysql_is_mariadb:
        return "utf8mb4_nopad_bin"
    if connection.mysql_version >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    raise RuntimeError("MySQL older than 8.0.17 has no binary NO PAD utf8mb4 collation; use MySQL 8.0.17+")


def _modify(schema_editor, collation: str) -> None:
    schema_editor.execute(f"ALTER TABLE {TABLE} MODIFY {COLUMN} VARCHAR({LENGTH}) "
                          f"CHARACTER SET utf8mb4 COLLATE {collation} NULL")


def to_binary(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    collation = binary_nopad_collation(connection)
    with connection.cursor() as cursor:  # refuse to go on with a collation that does not tell them apart
        cursor.execute(f"SELECT _utf8mb4'a' = _utf8mb4'a ' COLLATE {collation},"
                       f" _utf8mb4'a' = _utf8mb4'A' COLLATE {collation}")
        if cursor.fetchone() != (0, 0):
            raise RuntimeError(f"{collation} does not compare 'a', 'a ' and 'A' as three strings here")
    _modify(schema_editor, collation)


def to_table_default(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                       " AND TABLE_NAME = %s", [TABLE])
        (collation,) = cursor.fetchone()
    # Fails on the unique key if keys that differ only by case or trailing spaces exist: as it must.
    _modify(schema_editor, collation)


class Migration(migrations.Migration):
    atomic = False  # DDL commits implicitly on MySQL/MariaDB anyway
    dependencies = [("usage", "0005_backfill_purchase_overage_settled")]

    operations = [migrations.RunPython(to_binary, to_table_default)]
