"""storage_events: storage notification webhook -> CloudEvents to the broker (K_SINK).

POST /<backend>  one route per storage backend in events/backends.py:
                 /minio      MinIO bucket notifications (webhook target, auth_token as bearer)
                 /seaweedfs  SeaweedFS filer notifications (notification.webhook, bearer_token)
Answers and status codes: shared/intake/webhook.py. Mapping rules: docs/events.md.

Run: functions-framework --source functions/storage_events/main.py --target handle
"""

import functions_framework

from shared.intake.webhook import StorageWebhook
from shared.platform.http import HttpApp, Route
from shared.platform.lifecycle import FunctionInstance

instance = FunctionInstance("storage_events", ["events", "observability"])
webhook = StorageWebhook(instance.settings.events, instance.sink)
app = HttpApp(routes=[Route("POST", f"/{backend}", webhook.receiver(backend)) for backend in webhook.backends()],
              health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
