"""One function instance: its settings, read at start-up, and its clients, built once.

functions-framework imports `main.py` in gunicorn's master process and serves
from a forked worker. Settings are parsed at import so a bad configuration
stops the instance before it takes traffic; the connection pool and clients
are built on first use, inside the worker, because threads (the pool's) do not
survive a fork.
"""

from __future__ import annotations

import atexit
import importlib
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

from shared.platform import logs, metrics, tracing
from shared.platform.clamd import StreamingClamd, check_clamd, create_scanner
from shared.platform.delivery import EventSink
from shared.platform.http import HealthCheck
from shared.platform.settings import Settings, SettingsError

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from psycopg_pool import ConnectionPool

T = TypeVar("T")

# The modules that build a section's clients, and with them psycopg, boto3 or jwt (each 150-300 ms).
# A function imports only those of the sections it loads (storage_events: none), and imports them with
# the instance, so neither /healthz nor a first request waits for them (cold start).
SECTION_MODULES: Final = {
    "database": "shared.platform.db",
    "storage": "shared.platform.storage_probe",
    "event_auth": "shared.platform.auth",
}


def load_settings_or_exit(sections: Iterable[str]) -> Settings:
    try:
        return Settings.from_env(sections)
    except SettingsError as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class FunctionInstance:
    def __init__(self, name: str, sections: Iterable[str]):
        logs.configure()
        self.name = name
        self.sections = tuple(sections)
        self.settings = load_settings_or_exit(self.sections)
        for section in self.sections:
            if section in SECTION_MODULES:
                importlib.import_module(SECTION_MODULES[section])
        if self.settings.has("observability"):
            observability = self.settings.observability
            tracing.configure(name, observability.traces_exporter, observability.otlp_endpoint)
            metrics.configure(observability.metrics_token)
        self._lock = threading.RLock()  # re-entrant: one built object may need another
        self._built: dict[str, object] = {}
        atexit.register(self.stop)

    def once(self, key: str, build: Callable[[], T]) -> T:
        """Build a per-instance object on first use (in the serving worker), then reuse it."""
        with self._lock:
            if key not in self._built:
                self._built[key] = build()
            return self._built[key]  # type: ignore[return-value]

    @property
    def sink(self) -> EventSink:
        """Where this function sends the CloudEvents it emits (K_SINK); needs the `events` section."""
        return self.once("sink", lambda: EventSink.from_settings(self.settings.events))

    def event_sender(self, authorization: str | None) -> str:
        """Who delivered a CloudEvent (401/403 otherwise); needs the `event_auth` section. CloudEventApp asks it."""
        # Cold start: imported with the event_auth section, by SECTION_MODULES.
        from shared.platform.auth import EventSenderVerifier

        verifier = self.once("event_senders", lambda: EventSenderVerifier(self.settings.event_auth))
        return verifier.sender(authorization)

    def publish(self, events: Iterable) -> None:
        """Send typed events (anything with `to_cloudevent()`) to the sink, in order."""
        self.sink.send_all(event.to_cloudevent() for event in events)

    @property
    def db(self) -> ConnectionPool:
        # Cold start: imported with the database section, by SECTION_MODULES.
        from shared.platform.db import create_pool

        return self.once("db", lambda: create_pool(self.settings.database))

    @property
    def s3(self) -> BaseClient:
        # Cold start: imported with the storage section, by SECTION_MODULES.
        from shared.platform.storage import create_s3_client

        return self.once("s3", lambda: create_s3_client(self.settings.storage))

    @property
    def scanner(self) -> StreamingClamd:
        return self.once("scanner", lambda: create_scanner(self.settings.clamd))

    def health_checks(self) -> dict[str, HealthCheck]:
        """A check for each real dependency of this function, by the sections it loaded."""
        checks: dict[str, HealthCheck] = {}
        if "database" in self.sections:
            # Cold start: imported with the section, by SECTION_MODULES.
            from shared.platform.db import DatabaseCheck

            checks["database"] = DatabaseCheck(lambda: self.db)
        if "storage" in self.sections:
            # Cold start: imported with the section, by SECTION_MODULES.
            from shared.platform.storage_probe import StorageCheck

            checks["storage"] = StorageCheck(lambda: self.s3, self.settings.storage)
        if "clamd" in self.sections:
            checks["clamd"] = lambda: check_clamd(self.scanner)
        return checks

    def stop(self) -> None:
        """Drain and close the pool so a scale-down loses no in-flight transaction."""
        if "db" in self._built:  # a pool never built has nothing to drain
            self.db.close(timeout=10)
