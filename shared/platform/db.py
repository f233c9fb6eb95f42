"""PostgreSQL access: one connection pool per function instance."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

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


def check_database(pool: ConnectionPool) -> None:
    """Health check: a round trip through the pool."""
    with pool.connection(timeout=3) as conn:
        conn.execute("SELECT 1")
