"""expire: the retention pass, woken by the dropgate-expire PingSource through the broker.

Each `dev.knative.sources.ping` runs one bounded pass (shared/retention/expiry.py; docs/expire.md),
sends a `dev.dropgate.upload.expired` / `.abandoned` CloudEvent per upload to K_SINK, and
replies with the pass's summary as a `dev.dropgate.expire.completed` CloudEvent: Knative's
broker takes a reply only when it is empty or a CloudEvent (anything else is a 502 for it).
A malformed or foreign event answers 400 (dead-letter sink); the database, storage or the
sink being down answers 503, and the broker's redelivery runs a pass that resumes the work.

Run: functions-framework --source functions/expire/main.py --target handle
"""

from datetime import UTC, datetime

import functions_framework

from events.types import PassCompleted, Ping
from shared.platform import metrics
from shared.platform.http import CloudEventApp
from shared.platform.lifecycle import FunctionInstance
from shared.retention.expiry import RetentionBounds, run_retention

TASK = "expire"  # the PingSource's data, {"task": "expire"}; a ping without data is a tick too

instance = FunctionInstance("expire", ["storage", "database", "limits", "events", "retention", "event_auth",
                                       "observability"])
settings = instance.settings
bounds = RetentionBounds.from_settings(settings.retention)


def run_pass(event):
    ping = Ping.for_task(event, TASK)  # anything else is an InvalidEvent: 400
    summary = run_retention(instance.db, instance.s3, settings.storage,
                            retention_days=settings.limits.retention_days,
                            source=f"{settings.events.source}/expire", publish=instance.publish,
                            trigger=ping.id,
                            bounds=bounds)
    metrics.EXPIRE_UPLOADS.labels("expired").inc(summary.expired)
    metrics.EXPIRE_UPLOADS.labels("abandoned").inc(summary.abandoned)
    metrics.EXPIRE_UPLOADS.labels("object_missing").inc(summary.objects_missing)
    metrics.EXPIRE_OBJECTS_DELETED.inc(summary.objects_deleted)
    metrics.EXPIRE_ORPHANS_DELETED.inc(summary.orphans_deleted)
    return PassCompleted(id=f"expire-{summary.run_id}", source=f"{settings.events.source}/expire",
                         time=datetime.now(UTC), task=TASK, run_id=summary.run_id, trigger=ping.id,
                         summary=summary.as_dict()).to_cloudevent()


app = CloudEventApp(run_pass, senders=instance.event_sender, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
