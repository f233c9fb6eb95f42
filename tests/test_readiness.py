"""Readiness and liveness of a real function process: /healthz waits for the schema the code ships,
/livez answers whatever the dependencies do (docs/operations.md "Health")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dropgate_local.client import call
from dropgate_local.processes import free_port
from shared.platform import migrate
from shared.platform.migrate import apply_migrations, available_migrations
from tests.conftest import UNWATCHED_ENV


@pytest.fixture
def half_migrated_url(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database the previous release's Job migrated: every migration but the newest."""
    older_code = available_migrations()[:-1]
    with monkeypatch.context() as patch:
        patch.setattr(migrate, "available_migrations", lambda: older_code)
        apply_migrations(fresh_database_url)
    return fresh_database_url


@contextmanager
def start_metadata(stack, label: str, database_url: str) -> Iterator[str]:
    port = free_port()
    child = stack.start_function("metadata", port=port, label=label,
                                 extra_env={"DATABASE_URL": database_url, "DROPGATE_DB_CONNECT_TIMEOUT": "1",
                                            **UNWATCHED_ENV})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


def test_a_revision_on_an_old_schema_is_not_ready_until_the_job_migrates(stack, unwatched, half_migrated_url):
    before, newest = available_migrations()[-2:]
    with start_metadata(stack, "metadata-old-schema", half_migrated_url) as url:
        reply = call("GET", f"{url}/healthz")
        assert reply.status == 503, reply.body
        assert reply.json()["checks"] == {
            "storage": "ok",
            "database": f"unavailable: schema at version {before.version}, this code needs {newest.version} "
                        f"(missing {newest.version:04d}_{newest.name}): run the migration Job"}
        apply_migrations(half_migrated_url)  # what `python -m shared.platform.migrate` (the Job) does
        reply = call("GET", f"{url}/healthz")
        assert reply.status == 200, reply.body
        assert reply.json() == {"status": "ok", "checks": {"storage": "ok", "database": "ok"}}


def test_livez_answers_with_the_database_unreachable(stack, unwatched):
    closed = f"postgresql://dropgate@127.0.0.1:{free_port()}/dropgate"
    with start_metadata(stack, "metadata-livez-no-db", closed) as url:
        reply = call("GET", f"{url}/livez")
        assert (reply.status, reply.json()) == (200, {"status": "alive"})
        # The same instance is not ready: Knative routes around it, and liveness does not restart it.
        health = call("GET", f"{url}/healthz")
        assert health.status == 503 and health.json()["checks"]["database"] == "unavailable"
