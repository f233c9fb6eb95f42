"""Migrations against the real PostgreSQL server."""

import threading

import psycopg
import pytest

from shared.platform import migrate
from shared.platform.migrate import (
    MigrationError,
    apply_migrations,
    available_migrations,
)


def tables(url):
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


def test_apply_twice_is_idempotent(fresh_database_url):
    first = apply_migrations(fresh_database_url)
    assert [m.version for m in first] == [m.version for m in available_migrations()]
    assert {"uploads", "audit_log", "processed_events", "schema_migrations"} <= tables(fresh_database_url)
    assert apply_migrations(fresh_database_url) == []


def test_concurrent_runs_apply_each_migration_once(fresh_database_url):
    results, errors = [], []

    def run():
        try:
            results.append(apply_migrations(fresh_database_url))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(available_migrations())]
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(available_migrations())


def test_an_edited_applied_migration_is_refused(fresh_database_url, monkeypatch):
    apply_migrations(fresh_database_url)
    original = available_migrations()
    edited = [migrate.Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
    monkeypatch.setattr(migrate, "available_migrations", lambda: edited)
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        apply_migrations(fresh_database_url)


def test_schema_rejects_states_and_sizes_that_cannot_exist(fresh_database_url):
    apply_migrations(fresh_database_url)
    insert = ("INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
              " part_size, part_count, status, expires_at) VALUES (gen_random_uuid(), 'alice', 'b', %s, 'f',"
              " 'application/pdf', %s, 8388608, 1, %s, now() + interval '30 days')")
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(insert, ("ok", 10, "pending"))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ("bad-status", 10, "sort-of-clean"))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ("negative", -1, "pending"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("ok", 10, "pending"))


def test_migrate_command_reads_database_url(fresh_database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    assert migrate.main() == 0
    assert "0001_initial" in capsys.readouterr().out
    assert migrate.main() == 0
    assert "nothing (schema is current)" in capsys.readouterr().out


def test_migrate_command_without_database_url_names_it(monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert migrate.main() == 2
    assert "DATABASE_URL is required but not set" in capsys.readouterr().err
