"""metadata: records what storage reports about each object, idempotently.

Consumes com.amazonaws.s3.ObjectCreated:* / ObjectRemoved:* CloudEvents (both buckets) and
replies with dev.dropgate.metadata.recorded when an upload's record changed. What storage
contradicts (HEAD) changes nothing and is audited. Rules:
shared/uploads/storage_facts.py; event shapes: events/types.py.

Run: functions-framework --source functions/metadata/main.py --target handle
"""

import functions_framework

from events.types import StorageObjectEvent
from shared.platform.http import CloudEventApp
from shared.platform.lifecycle import FunctionInstance
from shared.uploads.storage_facts import MetadataRecorder

instance = FunctionInstance("metadata", ["storage", "database", "events", "event_auth", "observability"])


def recorder() -> MetadataRecorder:
    return instance.once("recorder", lambda: MetadataRecorder(
        instance.db, instance.s3, source=f"{instance.settings.events.source}/metadata"))


def handle_event(event):
    storage_event = StorageObjectEvent.from_cloudevent(event)  # InvalidEvent: 400, see shared.platform.http
    recorded = recorder().record(storage_event)
    reply = recorder().reply(storage_event, recorded)
    return reply.to_cloudevent() if reply else None


app = CloudEventApp(handle_event, senders=instance.event_sender, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
