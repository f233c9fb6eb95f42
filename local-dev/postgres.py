"""Embedded PostgreSQL for the local stack and the tests, from the `pgserver` wheel.

pgserver ships PostgreSQL's binaries; the server listens on a Unix socket in
its data folder only (no TCP port at all), and as root it runs under a
dedicated `pgserver` system user, as PostgreSQL refuses to run as root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pgserver
from pgserver._commands import pg_ctl


@dataclass
class EmbeddedPostgres:
    server: "pgserver.PostgresServer"

    @classmethod
    def start(cls, pgdata: Path, *, keep_running: bool = False) -> EmbeddedPostgres:
        """Start (or reuse) the server on pgdata; it stops when this process exits unless keep_running."""
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        return cls(pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop"))

    @property
    def url(self) -> str:
        return self.server.get_uri()

    def stop(self) -> None:
        """Stop the server now (fault tests); `restart()` brings it back on the same data."""
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def restart(self) -> None:
        self.server.ensure_postgres_running()
