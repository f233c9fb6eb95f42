"""Admin routes (role `admin`): releases and the SHA-256 blocklist; every decision audited (shared/scanning/verdicts.py).
Webhook endpoints too (shared/webhooks/registry.py; docs/webhooks.md): a secret is shown once, when made."""

from datetime import timedelta

import flask
from presign_context import caller, instance, limit_argument, settings, verdict_admin

from shared.platform.audit import Actor
from shared.platform.auth import ROLE_ADMIN
from shared.platform.delivery import EventSink
from shared.platform.egress import EgressPolicy
from shared.platform.errors import NotFound
from shared.platform.http import Route, json_response, read_json
from shared.webhooks.registry import EndpointChange, EndpointRegistry


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


def webhook_registry() -> EndpointRegistry:
    hooks = settings.webhooks
    return instance.once("webhooks", lambda: EndpointRegistry(
        instance.db, EgressPolicy.from_settings(hooks), rotation_grace=timedelta(seconds=hooks.rotation_grace_seconds)))


def admin_webhook_create(request):
    actor = admin_caller(request)
    endpoint, secret = webhook_registry().create(EndpointChange.from_json(read_json(request), creating=True), actor)
    return json_response(201, {**endpoint.public(), "secret": secret}, {"Location": f"/admin/webhooks/{endpoint.id}"})


def admin_webhook_list(request):
    admin_caller(request)
    return json_response(200, {"endpoints": [endpoint.public() for endpoint in webhook_registry().listed()]})


def admin_webhook_get(request, endpoint_id):
    admin_caller(request)
    return json_response(200, webhook_registry().get(endpoint_id).public())


def admin_webhook_update(request, endpoint_id):
    actor = admin_caller(request)
    change = EndpointChange.from_json(read_json(request), creating=False)
    return json_response(200, webhook_registry().update(endpoint_id, change, actor).public())


def admin_webhook_rotate(request, endpoint_id):
    actor = admin_caller(request)
    endpoint, secret = webhook_registry().rotate_secret(endpoint_id, actor)
    return json_response(200, {**endpoint.public(), "secret": secret})


def admin_webhook_delete(request, endpoint_id):
    actor = admin_caller(request)
    return json_response(200, {"id": str(webhook_registry().delete(endpoint_id, actor).id), "deleted": True})


ROUTES = [
    Route("POST", "/admin/files/{file_id}/release", admin_release),
    Route("GET", "/admin/blocklist", admin_blocklist),
    Route("POST", "/admin/blocklist", admin_block),
    Route("DELETE", "/admin/blocklist/{sha256}", admin_unblock),
    Route("POST", "/admin/webhooks", admin_webhook_create),
    Route("GET", "/admin/webhooks", admin_webhook_list),
    Route("GET", "/admin/webhooks/{endpoint_id}", admin_webhook_get),
    Route("PATCH", "/admin/webhooks/{endpoint_id}", admin_webhook_update),
    Route("DELETE", "/admin/webhooks/{endpoint_id}", admin_webhook_delete),
    Route("POST", "/admin/webhooks/{endpoint_id}/rotate-secret", admin_webhook_rotate),
]
