"""Versioned SQL migrations: `python -m shared.platform.migrate` (also `dropgate-dev migrate`).

Files `shared/platform/migrations/NNNN_name.sql` are applied in order, each in its own
transaction, and recorded with their checksum. A session-level advisory lock,
taken before anything else (even `CREATE TABLE IF NOT EXISTS` races in
PostgreSQL's catalog), makes concurrent runs (two pods of the migration Job)
safe: the second waits, then finds nothing to do. An applied file whose text changed is an
error, never silently skipped.

The functions ask `check_schema_current` from their /healthz (shared/platform/db.py): a revision
whose migrations the Job has not applied yet stays not-ready instead of serving on an old schema.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg.rows import tuple_row

from shared.platform.errors import NotReady

_FILE_PATTERN = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_ID = 0x64726F70  # "drop": any fixed number shared by every migrator


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


class SchemaNotCurrent(MigrationError, NotReady):
    """The database lacks a migration this code ships, or records one with other text."""


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("shared.platform.migrations").iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def apply_migrations(database_url: str) -> list[Migration]:
    """Apply what is missing; return the migrations applied by this call."""
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration in available_migrations():
                if _apply_one(conn, migration):
                    applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def _apply_one(conn: psycopg.Connection, migration: Migration) -> bool:
    """Apply one migration in its own transaction; False when it was applied before."""
    with conn.transaction():
        row = conn.execute(
            "SELECT checksum FROM schema_migrations WHERE version = %s", (migration.version,)
        ).fetchone()
        if row is not None:
            if row[0] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it was "
                    "applied; add a new migration instead of editing an applied one")
            return False
        conn.execute(migration.sql)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    return True


def applied_checksums(conn: psycopg.Connection) -> dict[int, str]:
    """version -> checksum of every migration the database records (one query); empty when never migrated.

    Read in a transaction of its own (a savepoint inside the caller's): a missing table aborts only that.
    """
    try:
        with conn.transaction():
            rows = conn.cursor(row_factory=tuple_row).execute(
                "SELECT version, checksum FROM schema_migrations").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return dict(rows)


def pending_migrations(conn: psycopg.Connection) -> list[Migration]:
    """The migrations this code ships that the database lacks, in order.

    Newer migrations the database has and this code does not know are fine: during a rollout the
    previous revision keeps serving after the Job migrated for the next one (so each migration must
    keep working for the code before it). A shipped migration recorded with another checksum is
    SchemaNotCurrent: the schema is not the one this code was written against.
    """
    return _pending(available_migrations(), applied_checksums(conn))


def check_schema_current(conn: psycopg.Connection) -> None:
    """SchemaNotCurrent, saying what to do, unless every migration this code ships is applied as shipped."""
    shipped, applied = available_migrations(), applied_checksums(conn)
    pending = _pending(shipped, applied)
    if pending:
        raise SchemaNotCurrent(
            f"schema at version {max(applied, default=0)}, this code needs {shipped[-1].version} (missing "
            f"{', '.join(f'{m.version:04d}_{m.name}' for m in pending)}): run the migration Job")


def _pending(shipped: list[Migration], applied: dict[int, str]) -> list[Migration]:
    for migration in shipped:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise SchemaNotCurrent(
                f"migration {migration.version:04d}_{migration.name} differs from the one the database "
                "recorded: this code and the schema disagree")
    return [m for m in shipped if m.version not in applied]


def main() -> int:
    from shared.platform.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(["database"])
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    applied = apply_migrations(settings.database.url)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing (schema is current)"
    print(f"migrations applied: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
