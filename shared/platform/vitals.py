"""Vitals: gauges of the whole deployment, read from their source when /metrics is scraped.

A counter or gauge that a function sets while it works describes that pod only, and a function
scaled to zero has no /metrics at all. The scan backlog, the oldest unscanned upload, clamd's
signature age are facts of the database and of clamd: they are read there, at scrape time, by a
collector that only scan registers (the prod overlay keeps one scan pod warm; it reaches both).
Reads are cached for `ttl` seconds, so every Prometheus replica and every dashboard reload together
cost one read per period. A source that fails reports `dropgate_vitals_up{source} 0` and its
gauges go missing from that scrape, so a rule sees "unknown" (absent), never a false zero.
Names and help: shared/platform/metrics.py `VITALS`; docs/monitoring.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.platform.clamd import StreamingClamd
from shared.platform.logs import log_event
from shared.platform.metrics import VITALS
from shared.platform.settings import ClamdSettings

if TYPE_CHECKING:  # annotations only: the pool is always the caller's
    import psycopg
    from psycopg_pool import ConnectionPool

logger = logging.getLogger("dropgate.vitals")

Reader = Callable[[], Mapping[str, float]]
# Each source answers within this or counts as down: a scrape must finish inside Prometheus' scrape timeout
# (10 s in manifests/base/monitoring/scrape.yaml) even with two sources slow.
READ_TIMEOUT_SECONDS = 3


@contextmanager
def bounded_read(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection whose transaction gives up after READ_TIMEOUT_SECONDS, for a source's queries.

    SET LOCAL lasts this transaction only, so the pool's connection goes back to its owner's work unchanged.
    """
    with pool.connection(timeout=READ_TIMEOUT_SECONDS) as conn:
        conn.execute(f"SET LOCAL statement_timeout = {READ_TIMEOUT_SECONDS * 1000}")
        yield conn


@dataclass(frozen=True)
class Source:
    """One place vitals come from: a name (the `source` label) and what reads its gauges, by name."""

    name: str
    read: Reader


def family(name: str, value: float | None = None) -> Metric:
    """The metric family `VITALS` defines under `name`, with its one sample when a value is given."""
    kind, documentation = VITALS[name]
    built = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, documentation)
    if value is not None:
        built.add_metric([], value)
    return built


class VitalsCollector:
    """A prometheus_client collector over `sources`, each read at most once per `ttl` seconds."""

    def __init__(self, sources: list[Source], ttl: float, clock: Callable[[], float] = time.monotonic):
        self._sources = sources
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()  # concurrent scrapes wait for one read instead of each reading
        self._read_at: float | None = None
        self._values: dict[str, float] = {}
        self._up: dict[str, int] = {}

    def describe(self) -> Iterator[Metric]:
        # Declared without samples, so registering does not read the database (it may not be up yet).
        for name in VITALS:
            yield family(name) if name != "dropgate_vitals_up" else GaugeMetricFamily(name, VITALS[name][1],
                                                                                      labels=["source"])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._ttl:
                self._values, self._up = self._read_all()
                self._read_at = now
            values, up = dict(self._values), dict(self._up)
        for name, value in values.items():
            yield family(name, value)
        sources = GaugeMetricFamily("dropgate_vitals_up", VITALS["dropgate_vitals_up"][1], labels=["source"])
        for name, ok in up.items():
            sources.add_metric([name], ok)
        yield sources

    def _read_all(self) -> tuple[dict[str, float], dict[str, int]]:
        values: dict[str, float] = {}
        up: dict[str, int] = {}
        for source in self._sources:
            try:
                read = source.read()
            except Exception as exc:  # noqa: BLE001 - a failing source is reported as down, never raised
                log_event(logger, "vitals source failed", logging.WARNING, source=source.name,
                          error=type(exc).__name__, outcome="missing")
                up[source.name] = 0
                continue
            unknown = set(read) - set(VITALS)
            assert not unknown, f"{source.name} read undeclared vitals {sorted(unknown)}"
            values.update(read)
            up[source.name] = 1
        return values, up


_registered: VitalsCollector | None = None


def serve(collector: VitalsCollector) -> None:
    """Serve `collector` on this process's /metrics (the default registry), replacing an earlier one."""
    global _registered
    if _registered is not None:
        REGISTRY.unregister(_registered)
    REGISTRY.register(collector)
    _registered = collector


def clamd_source(clamd: ClamdSettings) -> Source:
    """clamd's vitals: up, and the version and age of its signatures (from VERSION, one round trip).

    A client of its own with a short timeout, not scan's (whose timeout is a whole scan's, 600 s): a clamd
    that accepts and never answers must cost a scrape seconds, not hold every later scrape behind the lock.
    """
    scanner = StreamingClamd(clamd.host, clamd.port, timeout=READ_TIMEOUT_SECONDS)

    def read() -> dict[str, float]:
        try:
            signatures = scanner.signatures()
        except OSError:  # ScannerUnavailable, a timeout, clamd breaking off: clamd is down, which is the answer
            return {"dropgate_clamd_up": 0}
        found: dict[str, float] = {"dropgate_clamd_up": 1}
        if signatures.version is not None:
            found["dropgate_clamd_signature_version"] = signatures.version
        if signatures.built_at is not None:
            found["dropgate_clamd_signature_age_seconds"] = (datetime.now(UTC) - signatures.built_at).total_seconds()
        return found

    return Source("clamd", read)
