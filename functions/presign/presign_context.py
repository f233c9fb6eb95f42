"""What every presign route shares: settings, the token verifier, the signer, the services, the caller.

Built once per instance (cold start); the services on first use, in the serving worker
(shared/platform/lifecycle.py). main.py, companion_routes.py and admin_routes.py import this module,
never each other.
"""

import json
from pathlib import Path

import flask

from shared.platform import tracing
from shared.platform.audit import Actor
from shared.platform.auth import TOKEN_COOKIE, Principal, TokenVerifier
from shared.platform.delivery import EventSink
from shared.platform.errors import BadRequest
from shared.platform.http import client_address, require_same_origin_json
from shared.platform.lifecycle import FunctionInstance
from shared.platform.sigv4 import PresignSigner
from shared.scanning.content_policy import ContentPolicy
from shared.scanning.verdicts import VerdictAdmin
from shared.uploads.browser_s3 import BrowserS3
from shared.uploads.service import UploadService

instance = FunctionInstance("presign", ["storage", "database", "auth", "limits", "content", "events",
                                        "observability", "webhooks"])
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
    return instance.once("uploads", lambda: UploadService(
        storage=settings.storage, limits=settings.limits, pool=instance.db, s3=instance.s3, signer=signer,
        content=content_policy, announce=announce_completion if settings.events.emit_on_complete else None))


def browser_s3() -> BrowserS3:
    return instance.once("browser_s3", lambda: BrowserS3(uploads=service(), signer=signer, storage=settings.storage,
                                                          limits=settings.limits))


def announce_completion(event) -> None:
    sink = instance.once("sink", lambda: EventSink.from_settings(settings.events, timeout=ANNOUNCE_TIMEOUT_SECONDS))
    sink.send(event.to_cloudevent())


def verdict_admin() -> VerdictAdmin:
    return instance.once("verdicts", lambda: VerdictAdmin(storage=settings.storage, pool=instance.db, s3=instance.s3,
                                                          event_source=f"{settings.events.source}/presign"))


def caller(request: flask.Request, *, counted_by_route: bool = False,
           get_changes_state: bool = False) -> tuple[Principal, Actor]:
    """The verified user, counted against the rate limit, and how the audit log names them.

    `counted_by_route`: the route counts the request itself, in the statement that reads the upload
    (the part-URL routes: UploadService.sign_parts(count_request=True)), one round trip fewer.
    `get_changes_state`: a GET that creates something (Companion's `/s3/params`) is held to the
    same-origin rule of the token cookie like a POST.
    """
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie and not request.headers.get("Authorization"):
        require_same_origin_json(request, settings.storage.allowed_origins, get_changes_state=get_changes_state)
    principal = verifier.principal_from_request(request.headers.get("Authorization"), cookie)
    if not counted_by_route:
        service().count_request(principal)
    return principal, Actor(principal.subject, client_address(request, settings.limits.trusted_proxy_hops),
                            tracing.current_trace_id())


def limit_argument(request: flask.Request) -> int:
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise BadRequest("limit: a number from 1 to 500")
    return int(raw)
