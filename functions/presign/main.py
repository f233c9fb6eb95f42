"""presign: the HTTP API browsers talk to. File bytes never pass through it.

Run: functions-framework --source functions/presign/main.py --target handle
The API is described in functions/presign/openapi.json (served at /openapi.json).
"""

import ipaddress
import json
from pathlib import Path

import flask
import functions_framework

from events.emit import EventSink
from shared import companion, tracing
from shared.audit import Actor
from shared.auth import ROLE_ADMIN, TOKEN_COOKIE, Principal, TokenVerifier
from shared.content import ContentPolicy
from shared.errors import BadRequest, NotFound
from shared.instance import FunctionInstance
from shared.sigv4 import PresignSigner
from shared.uploads import CompletedPart, NewUpload, PartRequest, Upload, UploadService
from shared.verdicts import VerdictAdmin
from shared.web import HttpApp, Route, json_response, read_json

instance = FunctionInstance("presign", ["storage", "database", "auth", "limits", "content", "events",
                                        "observability"])
settings = instance.settings
content_policy = ContentPolicy.from_settings(settings.content)
verifier = TokenVerifier(settings.auth)
signer = PresignSigner(endpoint_url=settings.storage.public_endpoint_url or "https://s3.amazonaws.com",
                       access_key_id=settings.storage.access_key_id,
                       secret_access_key=settings.storage.secret_access_key, region=settings.storage.region)
OPENAPI = json.loads((Path(__file__).with_name("openapi.json")).read_text())


# The fast path (DROPGATE_EMIT_ON_COMPLETE): a short timeout, because a completion never waits long for it.
ANNOUNCE_TIMEOUT_SECONDS = 2.0


def service() -> UploadService:
    # Built on first use, in the serving worker (see shared.instance).
    return instance.once("uploads", lambda: UploadService(
        storage=settings.storage, limits=settings.limits, pool=instance.db, s3=instance.s3, signer=signer,
        content=content_policy, announce=announce_completion if settings.events.emit_on_complete else None))


def announce_completion(event) -> None:
    sink = instance.once("sink", lambda: EventSink(settings.events.sink_url, timeout=ANNOUNCE_TIMEOUT_SECONDS))
    sink.send(event.to_cloudevent())


def verdict_admin() -> VerdictAdmin:
    return instance.once("verdicts", lambda: VerdictAdmin(storage=settings.storage, pool=instance.db, s3=instance.s3,
                                                          event_source=f"{settings.events.source}/presign"))


def caller(request: flask.Request) -> tuple[Principal, Actor]:
    """The verified user, counted against the rate limit, and how the audit log names them."""
    principal = verifier.principal_from_request(request.headers.get("Authorization"),
                                                request.cookies.get(TOKEN_COOKIE))
    service().count_request(principal)
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    source_ip = forwarded or request.remote_addr
    try:
        ipaddress.ip_address(source_ip or "")
    except ValueError:
        source_ip = None
    return principal, Actor(principal.subject, source_ip, tracing.current_trace_id())


# -- dropgate's own API --

def create_upload(request):
    principal, actor = caller(request)
    upload = service().create(principal, NewUpload.from_json(read_json(request)), actor)
    return json_response(201, upload.public(), {"Location": f"/uploads/{upload.id}"})


def sign_parts(request, upload_id):
    principal, _ = caller(request)
    parts = service().sign_parts(principal, upload_id, PartRequest.list_from_json(read_json(request)))
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
    uploads = service().list_files(principal, everyone=everyone, limit=_limit(request))
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


# -- admin (role admin; every decision audited: shared/verdicts.py) --

def admin_caller(request: flask.Request) -> Actor:
    principal, actor = caller(request)
    principal.require(ROLE_ADMIN)
    return actor


def admin_release(request, file_id):
    actor = admin_caller(request)
    released = verdict_admin().release(file_id, actor, read_json(request).get("reason"))
    return json_response(200, Upload(released).public())


def admin_blocklist(request):
    admin_caller(request)
    return json_response(200, {"blocklist": [entry.public() for entry in verdict_admin().listed(_limit(request))]})


def admin_block(request):
    actor = admin_caller(request)
    body = read_json(request)
    added, events = verdict_admin().block(body.get("sha256"), body.get("reason"), actor)
    if events and settings.events.sink_url:
        sink = instance.once("admin-sink", lambda: EventSink(settings.events.sink_url))
        for event in events:
            sink.send(event.to_cloudevent())
    return json_response(201 if added else 200, {"sha256": body["sha256"].strip().lower(), "added": added,
                                                 "quarantined": [str(event.upload_id) for event in events]})


def admin_unblock(request, sha256):
    actor = admin_caller(request)
    if not verdict_admin().unblock(sha256, actor):
        raise NotFound(f"{sha256} is not on the blocklist")
    return json_response(200, {"sha256": sha256, "removed": True})


def openapi(_request):
    return json_response(200, OPENAPI)


def _limit(request: flask.Request) -> int:
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise BadRequest("limit: a number from 1 to 500")
    return int(raw)


# -- Uppy Companion's routes (see shared/companion.py) --

def companion_create(request):
    principal, actor = caller(request)
    new = companion.new_upload_from_companion(read_json(request))
    upload = service().create(principal, new, actor, part_size_rule=companion.uppy_default_part_size)
    return json_response(200, companion.created(upload))


def _companion_upload_id(principal: Principal, request: flask.Request, storage_upload_id: str) -> str:
    return service().find_by_storage_id(principal, storage_upload_id, request.args.get("key"))


def companion_list_parts(request, storage_upload_id):
    principal, _ = caller(request)
    _, parts = service().describe(principal, _companion_upload_id(principal, request, storage_upload_id))
    return json_response(200, [{"PartNumber": p.number, "Size": p.size, "ETag": p.etag} for p in parts])


def companion_batch_sign(request, storage_upload_id):
    principal, _ = caller(request)
    upload_id = _companion_upload_id(principal, request, storage_upload_id)
    signed = service().sign_parts(principal, upload_id, companion.part_numbers_from_query(
        request.args.get("partNumbers")))
    return json_response(200, {"presignedUrls": {str(part["number"]): part["url"] for part in signed}})


def companion_sign_part(request, storage_upload_id, part_number):
    principal, _ = caller(request)
    upload_id = _companion_upload_id(principal, request, storage_upload_id)
    [signed] = service().sign_parts(principal, upload_id, [companion.single_part(part_number)])
    return json_response(200, {"url": signed["url"], "expires": settings.limits.url_expiry_seconds})


def companion_complete(request, storage_upload_id):
    principal, actor = caller(request)
    upload_id = _companion_upload_id(principal, request, storage_upload_id)
    parts = CompletedPart.list_from_json(read_json(request), number_key="PartNumber", etag_key="ETag")
    upload = service().complete(principal, upload_id, parts, actor)
    return json_response(200, companion.completed(upload, settings.storage.public_endpoint_url or ""))


def companion_abort(request, storage_upload_id):
    principal, actor = caller(request)
    service().abort(principal, _companion_upload_id(principal, request, storage_upload_id), actor)
    return json_response(200, {})


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
        Route("POST", "/admin/files/{file_id}/release", admin_release),
        Route("GET", "/admin/blocklist", admin_blocklist),
        Route("POST", "/admin/blocklist", admin_block),
        Route("DELETE", "/admin/blocklist/{sha256}", admin_unblock),
        Route("GET", "/openapi.json", openapi),
        Route("POST", "/s3/multipart", companion_create),
        Route("GET", "/s3/multipart/{storage_upload_id}/batch", companion_batch_sign),
        Route("GET", "/s3/multipart/{storage_upload_id}", companion_list_parts),
        Route("DELETE", "/s3/multipart/{storage_upload_id}", companion_abort),
        Route("POST", "/s3/multipart/{storage_upload_id}/complete", companion_complete),
        Route("GET", "/s3/multipart/{storage_upload_id}/{part_number}", companion_sign_part),
    ],
    health_checks=instance.health_checks(),
    cors_origins=settings.storage.allowed_origins,
)


@functions_framework.http
def handle(request):
    return app(request)
