"""presign: the HTTP API browsers talk to. File bytes never pass through it.

Run: functions-framework --source functions/presign/main.py --target handle
The API is described in functions/presign/openapi.json (served at /openapi.json). Uppy Companion's
routes are companion_routes.py, the admin routes admin_routes.py; what they share, presign_context.py.
"""

import admin_routes
import companion_routes
import functions_framework
from presign_context import OPENAPI, caller, instance, limit_argument, service, settings

from shared.platform.errors import BadRequest
from shared.platform.http import HttpApp, Route, json_response, read_json
from shared.uploads.requests import CompletedPart, NewUpload, PartRequest


def create_upload(request):
    principal, actor = caller(request)
    upload = service().create(principal, NewUpload.from_json(read_json(request)), actor)
    return json_response(201, upload.public(), {"Location": f"/uploads/{upload.id}"})


def sign_parts(request, upload_id):
    principal, _ = caller(request, counted_by_route=True)
    parts = service().sign_parts(principal, upload_id, PartRequest.list_from_json(read_json(request)),
                                 count_request=True)
    return json_response(200, {"parts": parts})


def get_upload(request, upload_id):
    principal, _ = caller(request)
    upload, parts = service().describe(principal, upload_id)
    return json_response(200, {**upload.public(), "parts": [part.public() for part in parts]})


def complete_upload(request, upload_id):
    principal, actor = caller(request)
    upload = service().complete(principal, upload_id, CompletedPart.list_from_json(read_json(request)), actor)
    return json_response(200, upload.public())


def abort_upload(request, upload_id):
    principal, actor = caller(request)
    return json_response(200, service().abort(principal, upload_id, actor).public())


def list_files(request):
    principal, _ = caller(request)
    everyone = "mine" not in request.args and request.args.get("owner") == "*"
    uploads = service().list_files(principal, everyone=everyone, limit=limit_argument(request))
    return json_response(200, {"files": [upload.public() for upload in uploads]})


def download_file(request, file_id):
    principal, actor = caller(request)
    url = service().download_url(principal, file_id, actor)
    return json_response(200, {"url": url.url, "expires_at": url.expires_at.isoformat()})


def legal_hold(request, file_id):
    principal, actor = caller(request)
    on = read_json(request).get("on")
    if not isinstance(on, bool):
        raise BadRequest("on: required, true or false")
    return json_response(200, service().set_legal_hold(principal, file_id, on, actor).public())


def openapi(_request):
    return json_response(200, OPENAPI)


app = HttpApp(
    routes=[
        Route("POST", "/uploads", create_upload),
        Route("POST", "/uploads/{upload_id}/parts", sign_parts),
        Route("GET", "/uploads/{upload_id}", get_upload),
        Route("POST", "/uploads/{upload_id}/complete", complete_upload),
        Route("DELETE", "/uploads/{upload_id}", abort_upload),
        Route("GET", "/files", list_files),
        Route("GET", "/files/{file_id}/download", download_file),
        Route("PUT", "/files/{file_id}/legal-hold", legal_hold),
        Route("GET", "/openapi.json", openapi),
        *admin_routes.ROUTES,
        *companion_routes.ROUTES,
    ],
    health_checks=instance.health_checks(),
    cors_origins=settings.storage.allowed_origins,
)


@functions_framework.http
def handle(request):
    return app(request)
