"""Versioned SQL migrations: `python -m shared.platform.migrate` (also `dropgate-dev migrate`).

Files `shared/platform/migrations/NNNN_name.sql` are applied in order, each in its own
transaction, and recorded with their checksum. A session-level advisory lock,
taken before anything else (even `CREATE TABLE IF NOT EXISTS` races in
PostgreSQL's catalog), makes concurrent runs (two pods of the migration Job)
safe: the second waits, then finds nothing to do. An applied file whose text changed is an
error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import resources

import psycopg

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
