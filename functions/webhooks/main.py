"""webhooks: dropgate's public events to registered HTTP endpoints, signed per Standard Webhooks.

Two kinds of CloudEvent arrive, each through its Triggers (manifests/base/eventing/webhooks.yaml):
- a public event (dev.dropgate.scan.*, .upload.*, .metadata.recorded, .*.completed): recorded once,
  a delivery per endpoint that wants it, each tried now (shared/webhooks/dispatch.py `fan_out`);
- the dropgate-webhooks-retry PingSource's tick: the due retries are tried (`sweep`).
Receivers' failures are the delivery log's to retry, never the broker's: the answer is 204 either
way, and an empty 2xx is a reply Knative's broker accepts (pkg/broker/filter/filter_handler.go; a
JSON body that is not a CloudEvent would be a 502 for it). A malformed or foreign event answers 400
(dead-letter sink); the database being down answers 503, and the broker redelivers.

Run: functions-framework --source functions/webhooks/main.py --target handle
"""

import functions_framework

from events.types import PING, Ping
from shared.platform.http import CloudEventApp
from shared.platform.lifecycle import FunctionInstance
from shared.platform.logs import log_event
from shared.webhooks.dispatch import Dispatcher, logger
from shared.webhooks.model import WebhookMessage

TASK = "webhooks-retry"  # the PingSource's data, {"task": "webhooks-retry"}

instance = FunctionInstance("webhooks", ["database", "webhooks", "event_auth", "observability"])


def dispatcher() -> Dispatcher:
    return instance.once("dispatcher", lambda: Dispatcher(instance.db, instance.settings.webhooks))


def handle_event(event):
    if event["type"] == PING:
        ping = Ping.for_task(event, TASK)  # another job's ping is an InvalidEvent: 400
        log_event(logger, "webhook retry sweep", trigger=ping.id, **dispatcher().sweep().as_dict())
    else:
        message = WebhookMessage.from_cloudevent(event)  # not a public event: InvalidEvent, 400
        log_event(logger, "webhook fan-out", webhook_id=message.message_id, **dispatcher().fan_out(message).as_dict())
    # None: answered 204, the reply Knative's broker takes without a CloudEvent


app = CloudEventApp(handle_event, senders=instance.event_sender, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
