"""scan: streams each uploaded object through clamd, records one verdict, replies with it.

Triggered by "object created" CloudEvents of the uploads bucket. The reply is a
`dev.dropgate.scan.<verdict>` CloudEvent, which the broker routes onwards. A rescan after a
signature update (the reconcile pass sets `dropgatesigversion`) replies only when it finds
something.
Run: functions-framework --source functions/scan/main.py --target handle
"""

import uuid

import functions_framework

from events.types import ObjectCreated, ScanVerdict
from shared.platform import vitals
from shared.platform.dead_letters import dead_letters_source
from shared.platform.http import CloudEventApp
from shared.platform.lifecycle import FunctionInstance
from shared.scanning.content_policy import ContentPolicy
from shared.scanning.service import (
    RESCAN_EXTENSION,
    SIGNATURE_RESCAN_EXTENSION,
    ObjectScanner,
    ScanResult,
)
from shared.uploads.vitals import uploads_source
from shared.webhooks.vitals import webhooks_source

instance = FunctionInstance("scan", ["storage", "database", "clamd", "content", "events", "event_auth",
                                     "observability"])
settings = instance.settings
policy = ContentPolicy.from_settings(settings.content)
# The deployment's vitals (backlog, clamd, dead letters, webhook deliveries) on scan's /metrics: the prod
# overlay keeps it warm.
vitals.serve(vitals.VitalsCollector(
    [uploads_source(lambda: instance.db), dead_letters_source(lambda: instance.db),
     webhooks_source(lambda: instance.db), vitals.clamd_source(settings.clamd)],
    ttl=settings.observability.vitals_cache_seconds))


def object_scanner() -> ObjectScanner:
    return instance.once("object_scanner", lambda: ObjectScanner(
        storage=settings.storage, clamd=settings.clamd, pool=instance.db, s3=instance.s3, scanner=instance.scanner,
        policy=policy))


def verdict_event(result: ScanResult, rescan: str | None = None) -> ScanVerdict:
    # One verdict per upload, so one id: a duplicate delivery replies with the same event. A rescan
    # is a new verdict, so it gets an id of its own (subscribers that drop seen ids still see it).
    if result.rescan:
        event_id = f"{result.upload_id}.rescan.v{result.signature_version}"
    else:
        event_id = f"{result.upload_id}.rescan.{rescan}" if rescan else f"{result.upload_id}.scan"
    return ScanVerdict(
        id=event_id, source=f"{settings.events.source}/scan", time=result.scanned_at,
        upload_id=uuid.UUID(result.upload_id), verdict=result.verdict, bucket=result.bucket, key=result.key,
        size=result.size, sha256=result.sha256, detected_type=result.detected_type,
        signature=result.detail if result.verdict == "infected" else None,
        reason=result.detail if result.verdict != "clean" else None,
        signature_version=result.signature_version, rescan=result.rescan)


def scan_event(event):
    created = ObjectCreated.from_cloudevent(event)
    if created.bucket != settings.storage.uploads_bucket:
        return None  # quarantine copies and foreign buckets are not scanned
    wanted, operator_rescan = event.get(SIGNATURE_RESCAN_EXTENSION), event.get(RESCAN_EXTENSION)
    # An operator's rescan asks clamd to read the bytes again: no earlier finding is reused for it.
    result = object_scanner().scan(created.bucket, created.key, event_id=created.id,
                                   rescan_for_version=int(wanted) if str(wanted or "").isdigit() else None,
                                   reuse_verdicts=operator_rescan is None, etag=created.etag)
    return None if result is None else verdict_event(result, operator_rescan).to_cloudevent()


app = CloudEventApp(scan_event, senders=instance.event_sender, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
