"""reconcile: the reconciliation pass, woken by the dropgate-reconcile PingSource through the broker.

Each `dev.knative.sources.ping` runs one bounded pass (shared/retention/reconcile.py; docs/reconcile.md):
uploads whose storage notification seems lost get their canonical "object created" CloudEvent
re-emitted to K_SINK (the broker routes it to scan and metadata as storage's own would be), and
uploads whose re-drives are spent are marked unscannable; when clamd's signature database
advanced, recent clean files are asked to be scanned again (shared/scanning/rescan.py). The reply is
the pass's summary as a `dev.dropgate.reconcile.completed` CloudEvent (Knative's broker takes an
empty body or a CloudEvent, nothing else). A malformed or foreign event answers 400
(dead-letter sink); the database, storage or the sink being down answers 503, and the broker's
redelivery runs a pass that picks the same uploads again.

Run: functions-framework --source functions/reconcile/main.py --target handle
"""

from datetime import UTC, datetime, timedelta

import functions_framework

from events.types import PassCompleted, Ping
from shared.platform.http import CloudEventApp
from shared.platform.lifecycle import FunctionInstance
from shared.retention.reconcile import ReconcileBounds, run_reconcile
from shared.scanning.rescan import request_rescans

TASK = "reconcile"  # the PingSource's data, {"task": "reconcile"}; a ping without data is a tick too

# clamd: only its VERSION, to tell when signatures advanced (never a readiness dependency: see below).
instance = FunctionInstance("reconcile", ["storage", "database", "clamd", "events", "reconcile", "event_auth",
                                          "observability"])
settings = instance.settings
bounds = ReconcileBounds(
    grace=timedelta(seconds=settings.reconcile.grace_seconds),
    scan_timeout=timedelta(seconds=settings.reconcile.scan_timeout_seconds),
    max_attempts=settings.reconcile.max_attempts, max_redrives=settings.reconcile.max_redrives,
    max_checked=settings.reconcile.max_checked, time_budget=timedelta(seconds=settings.reconcile.time_budget_seconds))


def run_pass(event):
    ping = Ping.for_task(event, TASK)  # anything else is an InvalidEvent: 400
    summary = run_reconcile(instance.db, instance.s3, settings.storage, publish=instance.publish, trigger=ping.id,
                            bounds=bounds, verdict_source=f"{settings.events.source}/reconcile")
    rescans = request_rescans(instance.db, instance.scanner, instance.sink.send_all, days=settings.reconcile.rescan_days,
                              max_per_run=settings.reconcile.rescan_max_per_run)
    return PassCompleted(id=f"reconcile-{summary.run_id}", source=f"{settings.events.source}/reconcile",
                         time=datetime.now(UTC), task=TASK, run_id=summary.run_id, trigger=ping.id,
                         summary={**summary.as_dict(), "rescans": rescans.as_dict()}).to_cloudevent()


# Lost notifications must be re-driven even while clamd is down: clamd is not a readiness check here.
app = CloudEventApp(run_pass, senders=instance.event_sender,
                   health_checks={name: check for name, check in instance.health_checks().items() if name != "clamd"})


@functions_framework.http
def handle(request):
    return app(request)
