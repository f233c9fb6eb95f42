"""Admin routes (role `admin`): releases and the SHA-256 blocklist; every decision audited (shared/scanning/verdicts.py)."""

import flask
from presign_context import caller, instance, limit_argument, settings, verdict_admin

from shared.platform.audit import Actor
from shared.platform.auth import ROLE_ADMIN
from shared.platform.delivery import EventSink
from shared.platform.errors import NotFound
from shared.platform.http import Route, json_response, read_json


def admin_caller(request: flask.Request) -> Actor:
    principal, actor = caller(request)
    principal.require(ROLE_ADMIN)
    return actor


def admin_release(request, file_id):
    actor = admin_caller(request)
    released = verdict_admin().release(file_id, actor, read_json(request).get("reason"))
    return json_response(200, released.public())


def admin_blocklist(request):
    admin_caller(request)
    return json_response(200, {"blocklist": [entry.public() for entry in verdict_admin().listed(limit_argument(request))]})


def admin_block(request):
    actor = admin_caller(request)
    body = read_json(request)
    added, events = verdict_admin().block(body.get("sha256"), body.get("reason"), actor)
    if events and settings.events.sink_url:
        sink = instance.once("admin-sink", lambda: EventSink.from_settings(settings.events))
        for event in events:
            sink.send(event.to_cloudevent())
    return json_response(201 if added else 200, {"sha256": body["sha256"].strip().lower(), "added": added,
                                                 "quarantined": [str(event.upload_id) for event in events]})


def admin_unblock(request, sha256):
    actor = admin_caller(request)
    if not verdict_admin().unblock(sha256, actor):
        raise NotFound(f"{sha256} is not on the blocklist")
    return json_response(200, {"sha256": sha256, "removed": True})


ROUTES = [
    Route("POST", "/admin/files/{file_id}/release", admin_release),
    Route("GET", "/admin/blocklist", admin_blocklist),
    Route("POST", "/admin/blocklist", admin_block),
    Route("DELETE", "/admin/blocklist/{sha256}", admin_unblock),
]
