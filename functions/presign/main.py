"""presign: the HTTP API browsers talk to. File bytes never pass through it.

Run: functions-framework --source functions/presign/main.py --target handle
"""

import functions_framework

from shared.instance import FunctionInstance
from shared.web import HttpApp

instance = FunctionInstance("presign", ["storage", "database", "auth", "limits"])
app = HttpApp(routes=[], health_checks=instance.health_checks())


@functions_framework.http
def handle(request):
    return app(request)
