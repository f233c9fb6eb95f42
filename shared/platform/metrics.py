"""Prometheus metrics of one function instance, served as text at GET /metrics.

functions-framework serves from one gunicorn worker per instance (`WORKERS` = 1, as
Knative scales by pods), so the default registry of that worker is the instance's whole
story; the process and GC collectors of `prometheus_client` come with it. Names and
meanings: docs/operations.md, "Metrics". The local broker (local-dev/router.py) has
its own delivery metrics; in a cluster, Knative's Broker reports retries and dead letters.

`DROPGATE_METRICS_TOKEN`, when set, makes /metrics ask for `Authorization: Bearer <token>`:
presign is public, and its counters are nobody else's business.
"""

from __future__ import annotations

import typing
from typing import Final

import flask
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from events.types import Verdict
from shared.platform.bearer import holds_secret

METRICS_PATH: Final = "/metrics"

# -- presign --
UPLOADS_CREATED: Final = Counter("dropgate_uploads_created", "Uploads created (row + multipart upload)")
UPLOADS_COMPLETED: Final = Counter("dropgate_uploads_completed", "Multipart uploads completed in storage")
UPLOADS_ABORTED: Final = Counter(
    "dropgate_uploads_aborted", "Uploads aborted, by reason: the user cancelled, or completion checks failed",
    ["reason"])
PART_URLS_SIGNED: Final = Counter("dropgate_part_urls_signed", "Presigned part upload URLs issued")
DOWNLOAD_URLS_SIGNED: Final = Counter("dropgate_download_urls_signed", "Presigned download URLs issued")

# -- storage (shared/platform/storage_probe.py) --
STORAGE_CAPABILITY: Final = Gauge(
    "dropgate_storage_capability", "1 when the S3 server enforces what a guarantee rests on, 0 when it does not "
    "(running only because DROPGATE_STORAGE_ACCEPT_MISSING accepts it)", ["capability"])

# -- scan --
SCAN_VERDICTS: Final = Counter("dropgate_scan_verdicts", "Verdicts written, by verdict", ["verdict"])
SCAN_BYTES: Final = Counter("dropgate_scan_bytes", "Bytes read from storage and streamed through clamd")
SCAN_VERDICTS_REUSED: Final = Counter(
    "dropgate_scan_verdicts_reused", "Verdicts decided with an earlier upload's clamd finding for the same bytes "
    "(read and hashed once, not sent to clamd), by verdict", ["verdict"])
SCAN_DURATION: Final = Histogram(
    "dropgate_scan_duration_seconds", "Time from opening an object to its verdict (scans that wrote one)",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900))
ADMIN_ACTIONS: Final = Counter("dropgate_admin_actions", "Audited admin decisions: release, blocklist_add, "
                               "blocklist_remove", ["action"])
RESCANS_REQUESTED: Final = Counter("dropgate_rescans_requested", "Clean files the reconcile pass asked scan to "
                                   "read again after clamd's signature version advanced")
SCAN_RESCANS: Final = Counter("dropgate_scan_rescans", "Clean files read again after a signature update, by outcome",
                              ["outcome"])

# Zeros from the start, in every function, so rates and alerts see every series.
for _verdict in typing.get_args(Verdict):
    SCAN_VERDICTS.labels(_verdict)
    SCAN_VERDICTS_REUSED.labels(_verdict)

# -- expire --
EXPIRE_UPLOADS: Final = Counter(
    "dropgate_expire_uploads", "Uploads retired by the retention pass, by outcome "
    "(expired: retention passed; abandoned: stale multipart; object_missing: storage lost it)", ["outcome"])
EXPIRE_OBJECTS_DELETED: Final = Counter(
    "dropgate_expire_objects_deleted", "Objects (or versions) the retention pass deleted, orphans included")
EXPIRE_ORPHANS_DELETED: Final = Counter("dropgate_expire_orphans_deleted", "Objects no live upload owned, deleted")

# -- reconcile --
RECONCILE_UPLOADS: Final = Counter(
    "dropgate_reconcile_uploads", "Uploads the reconciliation pass acted on, by outcome (redriven: its object-created "
    "event re-emitted; object_missing: an attempt counted, no object to announce; failed: attempts spent) and reason "
    "(no_verdict, scan_stuck, not_recorded)", ["outcome", "reason"])

# -- every function --
EVENTS_RECEIVED: Final = Counter(
    "dropgate_events_received", "CloudEvents delivered to this function, by type and answer status",
    ["type", "status"])
EVENTS_REFUSED: Final = Counter(
    "dropgate_events_refused", "CloudEvents refused before any work: no or bad sender token (401), sender not "
    "allowed (403)", ["status"])
EVENTS_SENT: Final = Counter(
    "dropgate_events_sent", "CloudEvents this function sent to its sink, by type and outcome "
    "(sent, refused: the sink answered non-2xx, unavailable: no answer)", ["type", "outcome"])
HTTP_REQUESTS: Final = Counter(
    "dropgate_http_requests", "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"])
HTTP_DURATION: Final = Histogram(
    "dropgate_http_request_duration_seconds", "Time to answer an HTTP request (routes only: not /metrics, "
    "/healthz, /livez), by method and route template", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# -- vitals: facts of the whole deployment, read from the database and clamd when /metrics is scraped --
# (shared/platform/vitals.py). Only scan serves them: the prod overlay keeps it warm (min-scale 1) and it
# reaches both; a gauge in a function scaled to zero would vanish exactly when nobody looks at the backlog.
# Each scan pod reports the same values, so dashboards and rules take max() over pods. name -> (type, help)
VITALS: Final = {
    "dropgate_uploads_in_flight": ("gauge", "Uploads created and not completed yet (parts being uploaded)"),
    "dropgate_scan_backlog_uploads": ("gauge", "Completed uploads without a verdict yet (uploaded or scanning)"),
    "dropgate_scan_backlog_oldest_seconds": (
        "gauge", "Age of the oldest completed upload without a verdict, from its completion (0 when none waits)"),
    "dropgate_expiry_overdue_uploads": (
        "gauge", ("Live uploads past their expires_at that the retention pass has not retired yet (legal holds "
                  "excluded)")),
    "dropgate_reconcile_redriven_last_hour": (
        "gauge", "Uploads the reconcile pass re-drove in the last hour: their storage notification was lost"),
    "dropgate_dead_letters_recorded": (
        "counter", "Events that exhausted their retries, as the dead-letter Job recorded them in the database"),
    "dropgate_webhook_deliveries_pending": ("gauge", "Webhook deliveries not delivered yet, being retried"),
    "dropgate_webhook_deliveries_oldest_pending_seconds": (
        "gauge", "Age of the oldest webhook delivery still being retried (0 when none waits)"),
    "dropgate_webhook_deliveries_failed_last_day": (
        "gauge", "Webhook deliveries given up on in the last day (attempts spent, address refused, 410): replay them"),
    "dropgate_clamd_up": ("gauge", "1 when clamd answered VERSION, 0 when it did not"),
    "dropgate_clamd_signature_version": ("gauge", "Version of clamd's daily signature database"),
    "dropgate_clamd_signature_age_seconds": ("gauge", "Age of clamd's signature database, from its build time"),
    "dropgate_vitals_up": (
        "gauge", ("1 when the last read of a vitals source (label source: uploads, dead_letters, webhooks, clamd) "
                  "succeeded, 0 when it failed and its vitals are missing")),
}

for _outcome in ("expired", "abandoned", "object_missing"):
    EXPIRE_UPLOADS.labels(_outcome)
for _reason in ("user", "completion_check"):
    UPLOADS_ABORTED.labels(_reason)
for _outcome in ("redriven", "object_missing", "failed"):
    for _reason in ("no_verdict", "scan_stuck", "not_recorded"):
        RECONCILE_UPLOADS.labels(_outcome, _reason)

_token: str | None = None


def configure(token: str | None) -> None:
    """The bearer token /metrics asks for (None: open, as usual inside a cluster)."""
    global _token
    _token = token or None


def exposition() -> bytes:
    return generate_latest()


def metrics_response(request: flask.Request) -> flask.Response:
    if _token is not None:
        if not holds_secret(request.headers.get("Authorization"), _token):
            return flask.Response('{"error": "unauthorized", "detail": "GET /metrics needs the metrics token"}',
                                  status=401, mimetype="application/json",
                                  headers={"WWW-Authenticate": 'Bearer realm="dropgate-metrics"'})
    return flask.Response(exposition(), status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
