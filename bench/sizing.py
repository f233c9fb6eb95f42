"""The sizing model: from what one upload costs, what N concurrent uploaders need (docs/sizing.md).

Inputs, all measured by this bench run (bench/meters.py reads the servers' own counters):
- control plane, one client on a quiet stack: uploads of the average size, part by part as the
  uploader page does: presign's, PostgreSQL's and storage's CPU per upload, presign calls and
  storage requests per upload, and the client's own CPU (`measure_control`);
- pipeline: uploads of the average size through the whole pipeline until clean: CPU of every
  function, clamd, broker and PostgreSQL per upload, broker events and deliveries, storage requests,
  time to verdict (`measure_pipeline`);
- the shipped production overlay (manifests/overlays/prod, rendered): each Service's CPU limit,
  containerConcurrency, max-scale and database pool, clamd's MaxThreads and CPU limit.

The model is Little's law plus utilisation: N uploaders, each sending at UPLINK_MBIT, finish an
upload of S MB every S·8/UPLINK_MBIT s, so uploads arrive at λ = N / that. A component that spends
c CPU-seconds per upload needs λ·c cores, run at TARGET_UTILISATION so queueing stays short; work
that holds something for t seconds (a scan holds a clamd thread) holds λ·t of them at once.

`check` is the model against this machine: the throughput it predicts for the bench's N uploads
at once, from the one-client costs alone, against the throughput the load run measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from dropgate_local import platform_limits
from dropgate_local.router import load_manifests

from bench.meters import CLIENT, Meters, Reading

PROD_OVERLAY = Path(__file__).resolve().parents[1] / "manifests" / "overlays" / "prod"
USERS: Final = (400, 4_000, 40_000)
# An uploader's sending rate: 20 Mbit/s, a common office or home uplink. 25 MB then takes 10 s, so 400
# uploaders finish 40 uploads a second. Slower uplinks mean fewer uploads per second for the same N.
UPLINK_MBIT: Final = 20.0
# Cores are sized for 60% busy: below that, a request rarely queues behind another for long.
TARGET_UTILISATION: Final = 0.6
# Knative's Kafka Broker makes its topic with `default.topic.partitions` of kafka-broker-config
# (knative.dev/docs eventing/brokers/broker-types/kafka-broker: the example sets 10). Partitions bound how
# many consumers read in parallel; PARTITION_EVENTS_PER_S is the assumed rate one partition's consumer
# keeps up with when it delivers over HTTP to a Knative Service (~10 ms per delivery, in order).
KAFKA_DEFAULT_PARTITIONS: Final = 10
PARTITION_EVENTS_PER_S: Final = 100.0
# Which Service does what in the model, by its Knative name.
CONTROL = "dropgate-presign"
PIPELINE_SERVICES: Final = {"storage_events": "dropgate-storage-events", "metadata": "dropgate-metadata",
                            "scan": "dropgate-scan"}
CHECK_TOLERANCE: Final = 0.25  # the stated error of the model's prediction for this machine


# -- measuring the unit costs ----------------------------------------------------------------------

def per_upload(readings: list[tuple[Reading, float]], uploads: int) -> dict[str, Any]:
    """Readings of several stretches of `uploads` uploads each, as costs per upload: totals over all
    stretches divided by all their uploads (CPU counters tick every 10 ms; one upload alone is too short)."""
    count = uploads * len(readings)
    names = readings[0][0].cpu_s.keys()
    return {"cpu_s": {name: sum(r.cpu_s[name] for r, _ in readings) / count for name in names},
            "storage_requests": sum(r.storage_requests for r, _ in readings) / count,
            "events": sum(r.events for r, _ in readings) / count,
            "deliveries": sum(r.deliveries for r, _ in readings) / count,
            "seconds": statistics.median(s for _, s in readings) / uploads, "uploads": count}


def measure_control(meters: Meters, dropgate: Callable[[], Any], raw: Callable[[], Any], *, size_mb: float,
                    calls_per_upload: int, rounds: int, uploads: int = 3) -> dict[str, Any]:
    """One client, `uploads` uploads one after another per round, dropgate and raw alternating (ABAB)."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(meters.measure(lambda: [dropgate() for _ in range(uploads)]))
        theirs.append(meters.measure(lambda: [raw() for _ in range(uploads)]))
    return {"size_mb": size_mb, "calls": calls_per_upload, "dropgate": per_upload(ours, uploads),
            "raw": per_upload(theirs, uploads)}


def measure_pipeline(meters: Meters, upload_until_clean: Callable[[], float], *, size_mb: float,
                     rounds: int) -> dict[str, Any]:
    """`rounds` uploads through the whole pipeline, each measured alone; `upload_until_clean` returns its
    time to verdict."""
    readings, verdicts = [], []
    for _ in range(rounds):
        reading, seconds = meters.measure(lambda: verdicts.append(upload_until_clean()))
        readings.append((reading, seconds))
    return {"size_mb": size_mb, **per_upload(readings, 1), "verdict_s": statistics.median(verdicts)}


# -- the platform as shipped -------------------------------------------------------------------------

@dataclass(frozen=True)
class Shipped:
    """What the production overlay gives each piece: per pod CPU limit (cores), requests per pod, pods at most."""

    cpu: dict[str, float]
    concurrency: dict[str, int]
    max_scale: dict[str, int]
    pool: dict[str, int]
    clamd_threads: int
    clamd_cpu: float

    @classmethod
    def read(cls, overlay: Path = PROD_OVERLAY) -> Shipped:
        docs = load_manifests(overlay)
        services = [d for d in docs if platform_limits.kind_of(d) == ("serving.knative.dev", "Service")]
        cpu, concurrency, max_scale, pool = {}, {}, {}, {}
        for service in services:
            capacity = platform_limits.FunctionCapacity.of(service)
            container = platform_limits.only_container(service["spec"]["template"]["spec"])
            cpu[capacity.name] = cores(container["resources"]["limits"]["cpu"])
            concurrency[capacity.name], max_scale[capacity.name] = capacity.container_concurrency, capacity.max_scale
            if capacity.pool_max is not None:
                pool[capacity.name] = capacity.pool_max
        clamd = next(d for d in docs if platform_limits.kind_of(d) == ("apps", "Deployment")
                     and d["metadata"]["name"] == platform_limits.CLAMD_DEPLOYMENT)
        conf = next(d for d in docs if platform_limits.kind_of(d) == ("", "ConfigMap")
                    and "clamd.conf" in (d.get("data") or {}))
        container = next(c for c in clamd["spec"]["template"]["spec"]["containers"] if c["name"] == "clamd")
        return cls(cpu, concurrency, max_scale, pool,
                   int(platform_limits.clamav_conf(conf["data"]["clamd.conf"]).get("MaxThreads", "10")),
                   cores(container["resources"]["limits"]["cpu"]))


def cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("500m", "2") in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# -- the model ---------------------------------------------------------------------------------------

def plan(control: Mapping[str, Any], pipeline: Mapping[str, Any], shipped: Shipped, users: int,
         uplink_mbit: float = UPLINK_MBIT) -> dict[str, Any]:
    """What `users` concurrent uploaders of the measured average size need, piece by piece."""
    size_mb = control["size_mb"]
    session_s = size_mb * 8 / uplink_mbit
    rate = users / session_s  # uploads finished per second, by Little's law
    ours, flow = control["dropgate"], pipeline

    def replicas(service: str, cpu_per_upload: float, at_least: int = 1) -> dict[str, Any]:
        needed = rate * cpu_per_upload / TARGET_UTILISATION
        count = max(at_least, math.ceil(needed / shipped.cpu[service]))
        return {"cores": round(needed, 2), "replicas": count, "shipped_max_scale": shipped.max_scale[service],
                "enough_as_shipped": count <= shipped.max_scale[service]}

    # A scan holds one request slot and one clamd thread from the event to the verdict.
    scans_at_once = rate * flow["verdict_s"]
    at_least = {"scan": math.ceil(scans_at_once / shipped.concurrency[PIPELINE_SERVICES["scan"]])}
    pieces = {"presign": replicas(CONTROL, ours["cpu_s"]["presign"])}
    for name, service in PIPELINE_SERVICES.items():
        pieces[name] = replicas(service, flow["cpu_s"].get(name, 0.0), max(1, at_least.get(name, 1)))
    clamd_cores = rate * flow["cpu_s"].get("clamd", 0.0) / TARGET_UTILISATION
    clamd = {"cores": round(clamd_cores, 2), "threads_busy": round(scans_at_once, 1),
             "replicas": max(1, math.ceil(clamd_cores / shipped.clamd_cpu),
                             math.ceil(scans_at_once / shipped.clamd_threads)),
             "threads_per_replica": shipped.clamd_threads}
    # The pipeline's reading covers the whole upload (presign's queries too), so PostgreSQL and storage come from it.
    database_cpu = rate * flow["cpu_s"].get("postgres", 0.0)
    connections = (pieces["presign"]["replicas"] * shipped.pool[CONTROL]
                   + sum(pieces[n]["replicas"] * shipped.pool.get(s, 0) for n, s in PIPELINE_SERVICES.items()))
    allowed = int((platform_limits.POSTGRES_MAX_CONNECTIONS - platform_limits.POSTGRES_RESERVED_CONNECTIONS)
                  * platform_limits.DATABASE_SHARE)
    events = rate * flow["events"]
    return {
        "users": users, "size_mb": size_mb, "uplink_mbit": uplink_mbit, "uploads_per_s": round(rate, 1),
        "control_calls_per_s": round(rate * control["calls"], 1), **pieces, "clamd": clamd,
        "postgres": {"cores": round(database_cpu / TARGET_UTILISATION, 2), "connections": connections,
                     "fits_default_max_connections": connections <= allowed, "allowed": allowed},
        "broker": {"events_per_s": round(events, 1), "deliveries_per_s": round(rate * flow["deliveries"], 1),
                   "kafka_partitions": max(KAFKA_DEFAULT_PARTITIONS, math.ceil(events / PARTITION_EVENTS_PER_S))},
        "storage": {"requests_per_s": round(rate * flow["storage_requests"], 1),
                    "ingress_mb_s": round(users * uplink_mbit / 8, 1),
                    "scan_reads_mb_s": round(rate * size_mb, 1)},
    }


def check(control: Mapping[str, Any], cores_here: int, measured: Mapping[str, list[float]]) -> dict[str, Any]:
    """The model on this machine: N uploads at once make it CPU-bound (client, presign, PostgreSQL and storage
    share its cores), so throughput is cores / CPU per MB, with every CPU figure from the one-client runs.
    `measured` is the load run's MB/s per round, by side ("dropgate", "raw")."""
    found = {}
    for side in ("dropgate", "raw"):
        cpu = control[side]["cpu_s"]
        per_upload = sum(cpu.get(name, 0.0) for name in (CLIENT, "presign", "postgres", "seaweedfs"))
        predicted = cores_here * control["size_mb"] / per_upload
        actual = statistics.median(measured[side]) if measured.get(side) else None
        error = None if not actual else predicted / actual - 1
        found[side] = {"cpu_per_upload_s": per_upload, "predicted_mb_s": predicted, "measured_mb_s": actual,
                       "error": error, "within": error is not None and abs(error) <= CHECK_TOLERANCE}
    return found


def model(control: Mapping[str, Any], pipeline: Mapping[str, Any], cores_here: int,
          measured: Mapping[str, list[float]], shipped: Shipped | None = None) -> dict[str, Any]:
    shipped = shipped or Shipped.read()
    return {"assumptions": {"uplink_mbit": UPLINK_MBIT, "target_utilisation": TARGET_UTILISATION,
                            "partition_events_per_s": PARTITION_EVENTS_PER_S, "tolerance": CHECK_TOLERANCE},
            "shipped": asdict(shipped), "control": dict(control), "pipeline": dict(pipeline),
            "plans": [plan(control, pipeline, shipped, users) for users in USERS],
            "check": check(control, cores_here, measured)}


# -- the report --------------------------------------------------------------------------------------

def check_row(found: Mapping[str, Any], users: int, size_mb: int) -> dict:
    """The main table's row: the model's throughput for this machine against the load run's."""
    ours, raw = found["check"]["dropgate"], found["check"]["raw"]

    def side(item: Mapping[str, Any]) -> str:
        measured = item["measured_mb_s"]
        return (f"predicted {item['predicted_mb_s']:.0f} MB/s, measured {measured:.0f} MB/s "
                f"({item['error']:+.0%})" if measured else f"predicted {item['predicted_mb_s']:.0f} MB/s")
    return {"name": f"sizing model on this machine: {users} × {size_mb} MB at once, throughput predicted from "
                    "one client's CPU per upload (client, presign, PostgreSQL, storage) / the cores",
            "dropgate": side(ours), "baseline": side(raw) + " (raw path, same model)", "ratio": None,
            "target": f"within ±{CHECK_TOLERANCE:.0%}", "met": bool(ours["within"] and raw["within"])}


def markdown(found: Mapping[str, Any], uplink_mbit: float = UPLINK_MBIT) -> list[str]:
    """The sizing table: one column per number of concurrent uploaders."""
    plans, control, pipeline = found["plans"], found["control"], found["pipeline"]
    ours = control["dropgate"]
    lines = ["## Sizing (bench/sizing.py, docs/sizing.md)", "",
             f"Measured per upload of {control['size_mb']:.0f} MB: presign {ours['cpu_s']['presign'] * 1000:.1f} ms "
             f"CPU over {control['calls']} calls; pipeline CPU "
             + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in sorted(pipeline["cpu_s"].items())
                         if name != CLIENT and seconds > 0)
             + f"; {pipeline['events']:.1f} events and {pipeline['deliveries']:.1f} deliveries; "
             f"{pipeline['storage_requests']:.1f} storage requests; time to verdict {pipeline['verdict_s']:.2f} s. "
             f"Assumed: {uplink_mbit:g} Mbit/s per uploader, cores sized for {TARGET_UTILISATION:.0%} busy, "
             f"{PARTITION_EVENTS_PER_S:.0f} events/s per Kafka partition. Replicas at the production overlay's "
             "CPU limits; '(max-scale N)' where the shipped max-scale is too small.", "",
             "| concurrent uploaders | " + " | ".join(f"{p['users']:,}" for p in plans) + " |",
             "| --- |" + " --- |" * len(plans)]

    def line(title: str, cell: Callable[[Mapping[str, Any]], str]) -> None:
        lines.append(f"| {title} | " + " | ".join(cell(p) for p in plans) + " |")

    def pods(name: str) -> Callable[[Mapping[str, Any]], str]:
        def cell(p: Mapping[str, Any]) -> str:
            piece = p[name]
            short = "" if piece["enough_as_shipped"] else f" (max-scale {piece['shipped_max_scale']})"
            return f"{piece['replicas']} ({piece['cores']} cores){short}"
        return cell

    line("uploads finished per second", lambda p: f"{p['uploads_per_s']}")
    line("presign calls per second", lambda p: f"{p['control_calls_per_s']}")
    for name in ("presign", *PIPELINE_SERVICES):
        line(f"{name} replicas", pods(name))
    line("clamd replicas × threads (busy threads; cores)", lambda p: (
        f"{p['clamd']['replicas']} × {p['clamd']['threads_per_replica']} ({p['clamd']['threads_busy']}; "
        f"{p['clamd']['cores']} cores)"))
    line("PostgreSQL cores; connections (pools × replicas)", lambda p: (
        f"{p['postgres']['cores']}; {p['postgres']['connections']}"
        + ("" if p["postgres"]["fits_default_max_connections"] else
           f" (over the {p['postgres']['allowed']} a default max_connections leaves: pool them, e.g. PgBouncer)")))
    line("broker events/s; deliveries/s; Kafka partitions", lambda p: (
        f"{p['broker']['events_per_s']}; {p['broker']['deliveries_per_s']}; {p['broker']['kafka_partitions']}"))
    line("storage requests/s; ingress MB/s; scan reads MB/s", lambda p: (
        f"{p['storage']['requests_per_s']}; {p['storage']['ingress_mb_s']}; {p['storage']['scan_reads_mb_s']}"))
    checked = found["check"]
    lines += ["", "Check on this machine (" + "; ".join(
        f"{side}: predicted {item['predicted_mb_s']:.0f} MB/s from {item['cpu_per_upload_s'] * 1000:.0f} ms CPU per "
        f"upload, measured {item['measured_mb_s'] or 0:.0f} MB/s" for side, item in checked.items()) + ")."]
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.sizing bench/results/<date>.json [--uplink-mbit U] [--users N ...]`: the table again
    from a saved run's measured costs, for other uplinks or numbers of uploaders (no new measurement)."""
    parser = argparse.ArgumentParser(description="the sizing table from a saved bench report")
    parser.add_argument("report", type=Path)
    parser.add_argument("--uplink-mbit", type=float, default=UPLINK_MBIT)
    parser.add_argument("--users", type=int, nargs="+", default=list(USERS))
    args = parser.parse_args(argv)
    saved = json.loads(args.report.read_text())["sizing"]
    if not saved:
        print(f"{args.report}: that run measured no sizing costs (its pipeline gave no verdict)", file=sys.stderr)
        return 1
    shipped = Shipped(**saved["shipped"])
    plans = [plan(saved["control"], saved["pipeline"], shipped, users, args.uplink_mbit) for users in args.users]
    print("\n".join(markdown({**saved, "plans": plans}, uplink_mbit=args.uplink_mbit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
