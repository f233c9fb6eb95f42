"""Migrations against the real PostgreSQL server."""

import dataclasses
import threading
import types
import typing
import uuid

import psycopg
import pytest

from shared.platform import migrate
from shared.platform.migrate import (
    MigrationError,
    apply_migrations,
    available_migrations,
)
from shared.uploads.model import UploadRow, UploadStatus, upload_row


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


def test_upload_row_has_one_field_per_column_of_uploads(fresh_database_url):
    """shared/uploads/model.py's UploadRow is the one home of an upload row's shape: it follows every migration."""
    apply_migrations(fresh_database_url)
    assert_fields_follow_the_table(fresh_database_url, "uploads", UploadRow)


def assert_fields_follow_the_table(url: str, table: str, row_type: type) -> list[str]:
    """`row_type`'s fields are `table`'s columns in order, `| None` exactly where NULL fits; the names."""
    with psycopg.connect(url) as conn:
        columns = conn.execute("SELECT column_name, is_nullable FROM information_schema.columns"
                               " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                               (table,)).fetchall()
    fields = [field.name for field in dataclasses.fields(row_type)]
    names = [name for name, _ in columns]
    assert fields == names, (f"{row_type.__name__} lacks {sorted(set(names) - set(fields))}, has no column for "
                             f"{sorted(set(fields) - set(names))}; its fields follow the table's column order")
    hints = typing.get_type_hints(row_type)
    optional = {name for name, hint in hints.items()
                if isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)}
    assert optional == {name for name, nullable in columns if nullable == "YES"}, "`| None` exactly where NULL fits"
    return names


def test_a_whole_uploads_row_reads_as_an_upload_row(fresh_database_url):
    apply_migrations(fresh_database_url)
    upload_id = uuid.uuid4()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
                     " part_size, part_count, expires_at) VALUES (%s, 'alice', 'b', 'k', 'f.pdf', 'application/pdf',"
                     " 10, 8388608, 1, now() + interval '30 days')", (upload_id,))
        row = conn.cursor(row_factory=upload_row).execute("SELECT * FROM uploads").fetchone()
        as_dict = conn.cursor(row_factory=psycopg.rows.dict_row).execute("SELECT * FROM uploads").fetchone()
    assert row == UploadRow.from_db(as_dict)
    assert (row.id, row.status, row.legal_hold, row.redrive_attempts) == (upload_id, UploadStatus.PENDING, False, 0)
    assert type(row.public()["status"]) is str and row.public()["status"] == "pending"


# ---------------------------------------------------------------- readiness: is the schema the code's?

def migrate_only(url: str, count: int, monkeypatch) -> None:
    """Apply the first `count` migrations, as an older release's Job did."""
    shipped = available_migrations()
    with monkeypatch.context() as patch:
        patch.setattr(migrate, "available_migrations", lambda: shipped[:count])
        apply_migrations(url)


def test_a_half_migrated_schema_is_not_current_and_says_what_to_do(fresh_database_url, monkeypatch):
    shipped = available_migrations()
    migrate_only(fresh_database_url, len(shipped) - 2, monkeypatch)
    with psycopg.connect(fresh_database_url) as conn:
        assert [m.version for m in migrate.pending_migrations(conn)] == [m.version for m in shipped[-2:]]
        with pytest.raises(migrate.SchemaNotCurrent) as caught:
            migrate.check_schema_current(conn)
    last, before = shipped[-1], shipped[-3]
    assert str(caught.value) == (
        f"schema at version {before.version}, this code needs {last.version} (missing "
        f"{shipped[-2].version:04d}_{shipped[-2].name}, {last.version:04d}_{last.name}): run the migration Job")
    apply_migrations(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        assert migrate.pending_migrations(conn) == []
        migrate.check_schema_current(conn)


def test_a_never_migrated_database_is_version_0_and_the_callers_transaction_survives(fresh_database_url):
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("SELECT 1")  # the caller is inside a transaction of its own
        with pytest.raises(migrate.SchemaNotCurrent, match=r"^schema at version 0, this code needs \d+ \(missing 0001_"):
            migrate.check_schema_current(conn)
        assert conn.execute("SELECT 2").fetchone() == (2,), "the missing table aborted only the check's savepoint"


def test_a_schema_ahead_of_the_code_is_current(fresh_database_url, monkeypatch):
    """During a rollout the previous revision keeps serving after the Job migrated for the next one."""
    apply_migrations(fresh_database_url)
    older_code = available_migrations()[:-1]
    monkeypatch.setattr(migrate, "available_migrations", lambda: older_code)
    with psycopg.connect(fresh_database_url) as conn:
        assert migrate.pending_migrations(conn) == []
        migrate.check_schema_current(conn)


def test_a_shipped_migration_recorded_with_other_text_is_not_current(fresh_database_url):
    apply_migrations(fresh_database_url)
    first = available_migrations()[0]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = %s", (first.version,))
        with pytest.raises(migrate.SchemaNotCurrent, match=f"migration {first.version:04d}_{first.name} differs"):
            migrate.check_schema_current(conn)


def test_the_database_check_caches_a_current_schema_and_only_that(fresh_database_url, monkeypatch):
    """Steady-state readiness is a SELECT 1: the schema is read until it has been seen current, then never."""
    from psycopg_pool import ConnectionPool

    from shared.platform.db import DatabaseCheck

    migrate_only(fresh_database_url, 1, monkeypatch)
    with ConnectionPool(fresh_database_url, min_size=1, max_size=1, open=True) as pool:
        check = DatabaseCheck(lambda: pool)
        with pytest.raises(migrate.SchemaNotCurrent, match="run the migration Job"):
            check()
        with pytest.raises(migrate.SchemaNotCurrent):
            check()  # a failure is not remembered: the next probe reads the schema again
        apply_migrations(fresh_database_url)
        check()
        reads = []
        monkeypatch.setattr(migrate, "applied_checksums", lambda conn: reads.append(conn) or {})
        check()
        assert reads == [], "a schema seen current is not read again"
        with pytest.raises(migrate.SchemaNotCurrent):
            DatabaseCheck(lambda: pool)()  # a new instance (another pod) reads it


def test_endpoint_has_one_field_per_column_of_webhook_endpoints(fresh_database_url):
    """shared/webhooks/model.py's Endpoint (and ENDPOINT_COLUMNS, what every query selects) follow the table too."""
    from shared.webhooks.model import ENDPOINT_COLUMNS, Endpoint

    apply_migrations(fresh_database_url)
    names = assert_fields_follow_the_table(fresh_database_url, "webhook_endpoints", Endpoint)
    assert ENDPOINT_COLUMNS.split(", ") == names


def test_a_disabled_endpoint_needs_its_reason(fresh_database_url):
    """0010: disabled_at and disabled_reason are set and cleared together, so a disabled endpoint always says why."""
    apply_migrations(fresh_database_url)
    insert = ("INSERT INTO webhook_endpoints (id, url, secret, created_by, disabled_at, disabled_reason)"
              " VALUES (gen_random_uuid(), 'https://h.example/x', 'whsec_x', 'tests', %s, %s)")
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(insert, (None, None))
        conn.execute(insert, ("2026-12-03T10:00:00Z", "disabled by carol at 2026-12-03T10:00:00Z"))
        for half in (("2026-12-03T10:00:00Z", None), (None, "a reason without a time")):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, half)
