"""PostgreSQL access: one connection pool per function instance."""

from __future__ import annotations

from collections.abc import Callable

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.platform.migrate import check_schema_current
from shared.platform.settings import DatabaseSettings


def create_pool(settings: DatabaseSettings) -> ConnectionPool:
    """A pool opened in the background: a cold start does not wait for the database,
    and a database that is down shows in /healthz instead of crashing the instance."""
    pool = ConnectionPool(
        settings.url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_seconds,
        kwargs={"row_factory": dict_row, "connect_timeout": settings.connect_timeout_seconds},
        open=False,
        name="dropgate",
    )
    pool.open(wait=False)
    return pool


class DatabaseCheck:
    """/healthz's database check: a round trip through the pool, and a schema this code can use.

    On Knative a new revision can start before the migration Job has run; until every migration it
    ships is applied it stays not-ready (`SchemaNotCurrent`, whose reason /healthz shows) instead of
    serving on an old schema. Schema versions only move forward, so once seen current the answer is
    kept and a steady-state check is `SELECT 1` alone. The pool is asked for lazily: the check is
    built before gunicorn forks, the pool only in the serving worker.
    """

    def __init__(self, pool: Callable[[], ConnectionPool]):
        self._pool = pool
        self._schema_current = False

    def __call__(self) -> None:
        with self._pool().connection(timeout=3) as conn:
            if self._schema_current:
                conn.execute("SELECT 1")
                return
            check_schema_current(conn)
            self._schema_current = True
