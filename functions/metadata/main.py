"""metadata: records what storage reports about each object, idempotently.

Run: functions-framework --source functions/metadata/main.py --target handle
"""

import functions_framework

from shared.errors import NotImplementedYet
from shared.instance import FunctionInstance
from shared.web import CloudEventApp

instance = FunctionInstance("metadata", ["database", "events"])


def handle_event(event):
    raise NotImplementedYet("the metadata handler is not implemented yet; only /healthz answers")


app = CloudEventApp(handle_event, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
