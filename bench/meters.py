"""What a stretch of work cost the servers: CPU seconds per process, storage requests, broker events.

Read before and after the work, from the servers' own counters (none of it is estimated):
- CPU: utime + stime of each process tree from /proc (bench/peers: `tree_cpu_seconds`), and the
  bench process's own CPU (`time.process_time`, every client thread) as "client";
- storage requests: SeaweedFS's S3 gateway counts every request it answers
  (`SeaweedFS_s3_request_total`, its Prometheus endpoint, local-dev/seaweed.py);
- events: the local broker counts events accepted at ingress and deliveries finished
  (`dropgate_router_events_accepted_total`, `dropgate_router_deliveries_total`, local-dev/router.py).

bench/sizing.py turns these into the per-upload costs its model scales up.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dropgate_local.stack import HOST, LocalStack

from bench.peers import postgres_pid, tree_cpu_seconds

CLIENT = "client"


@dataclass(frozen=True)
class Reading:
    cpu_s: dict[str, float]
    storage_requests: float
    events: float
    deliveries: float

    def minus(self, before: Reading) -> Reading:
        return Reading({name: self.cpu_s[name] - before.cpu_s.get(name, 0.0) for name in self.cpu_s},
                       self.storage_requests - before.storage_requests, self.events - before.events,
                       self.deliveries - before.deliveries)


@dataclass
class Meters:
    """The processes to watch (name -> root pid) on one stack; `read()` is one reading of everything."""

    stack: LocalStack
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stack: LocalStack, extra: Mapping[str, int] | None = None) -> Meters:
        """Every child process the stack started (functions by name, storage, clamd, broker), PostgreSQL."""
        pids = {name: child.pid for name, child in stack.children.items() if child.pid}
        postgres = postgres_pid(stack)
        if postgres:
            pids["postgres"] = postgres
        return cls(stack, {**pids, **(extra or {})})

    def read(self) -> Reading:
        cpu = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        cpu[CLIENT] = time.process_time()
        return Reading(cpu, self._storage_requests(), *self._broker_counts())

    def measure(self, work: Callable[[], object]) -> tuple[Reading, float]:
        """(what `work()` cost, its wall seconds)."""
        before, started = self.read(), time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        return self.read().minus(before), seconds

    def _storage_requests(self) -> float:
        return sum(prometheus_samples(f"http://{HOST}:{self.stack.ports.seaweed.s3_metrics}/metrics",
                                      "SeaweedFS_s3_request_total"))

    def _broker_counts(self) -> tuple[float, float]:
        if "router" not in self.stack.children:
            return 0.0, 0.0
        url = f"http://{HOST}:{self.stack.ports.router}/metrics"
        return (sum(prometheus_samples(url, "dropgate_router_events_accepted_total")),
                sum(prometheus_samples(url, "dropgate_router_deliveries_total")))


def prometheus_samples(url: str, metric: str) -> list[float]:
    """The values of every sample of `metric` (any labels) in a Prometheus text exposition."""
    with urllib.request.urlopen(url, timeout=10) as reply:  # loopback only
        text = reply.read().decode()
    values = []
    for line in text.splitlines():
        if line.startswith(metric) and line[len(metric):len(metric) + 1] in ("{", " "):
            values.append(float(line.rsplit(" ", 1)[1]))
    return values
