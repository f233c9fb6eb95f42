"""storage_events: storage notification webhook -> CloudEvents to the broker (K_SINK).

Run: functions-framework --source functions/storage_events/main.py --target handle
"""

import functions_framework

from shared.instance import FunctionInstance
from shared.web import HttpApp

instance = FunctionInstance("storage_events", ["events"])
app = HttpApp(routes=[], health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
