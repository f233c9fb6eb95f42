"""scan: streams each uploaded object through clamd and records the verdict.

Run: functions-framework --source functions/scan/main.py --target handle
"""

import functions_framework

from shared.errors import NotImplementedYet
from shared.instance import FunctionInstance
from shared.web import CloudEventApp

instance = FunctionInstance("scan", ["storage", "database", "clamd", "events"])


def handle_event(event):
    raise NotImplementedYet("the scan handler is not implemented yet; only /healthz answers")


app = CloudEventApp(handle_event, health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
