"""Typed settings, read once from environment variables at start-up.

Each function loads only the sections it needs (scan never sees the OIDC
settings, presign never sees clamd's address), so a Knative Service gets only
the Secrets it uses. Every problem is collected and reported at once, naming
the variable, so a misconfigured deployment fails on its first start with one
readable message instead of on its first request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from shared.platform.env import EnvReader
from shared.platform.settings_auth import AuthSettings, EventAuthSettings
from shared.platform.settings_webhooks import WebhookSettings

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB

# S3 multipart limits (AWS S3 and MinIO): parts of 5 MiB..5 GiB, at most 10,000 parts.
S3_MIN_PART_SIZE: Final = 5 * MIB
S3_MAX_PART_SIZE: Final = 5 * GIB
S3_MAX_PARTS: Final = 10_000

# Compliance ceiling: no file may be kept longer than this, whatever is configured.
MAX_RETENTION_DAYS: Final = 30

SSE_ALGORITHMS: Final = ("AES256", "aws:kms", "none")
# What the storage probe checks (shared.platform.storage_probe.Capability, kept equal by a test there).
STORAGE_CAPABILITIES: Final = frozenset({"signature", "signed-length", "part-checksum", "post-policy-length", "sse",
                                         "object-lock", "notifications"})
# The capabilities a deployment configures rather than every server having: probed only where expected.
CONFIGURED_CAPABILITIES: Final = frozenset({"object-lock", "notifications"})
TRACES_EXPORTERS: Final = ("none", "console", "otlp")
# Kinds of content DROPGATE_DENIED_CONTENT can refuse (shared/scanning/content_policy.py; docs/content-policy.md).
CONTENT_KINDS: Final = ("executable", "script", "active-markup", "java")
# Whose earlier verdicts a scan may reuse for identical bytes (shared/scanning/reuse.py; docs/scan.md).
VERDICT_REUSE_SCOPES: Final = ("same-owner", "any-owner", "off")
_MEDIA_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})$")



class SettingsError(ValueError):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid dropgate configuration:\n{lines}")


@dataclass(frozen=True)
class StorageSettings:
    """Where objects live. Works with MinIO, SeaweedFS and AWS S3 (leave the endpoint empty)."""

    endpoint_url: str | None
    public_endpoint_url: str | None  # the address browsers reach; presigned URLs are signed for it
    region: str
    access_key_id: str
    secret_access_key: str
    uploads_bucket: str
    quarantine_bucket: str
    allowed_origins: tuple[str, ...]  # bucket CORS, for the setup step
    # Server-side encryption of every object dropgate makes storage write (docs/operations.md):
    # "AES256" (SSE-S3, the default), "aws:kms" (SSE-KMS, with sse_kms_key_id or the server's
    # default key) or None (DROPGATE_SSE=none: leave it to the bucket).
    sse_algorithm: str | None = "AES256"
    sse_kms_key_id: str | None = None
    # Capabilities (shared/platform/storage_probe.py Capability values) the operator accepts the
    # server lacks: the functions then run with that guarantee weaker, and say so (docs/storage.md).
    accept_missing: frozenset[str] = frozenset()
    # What the deployment configured on both buckets and the probe must find (DROPGATE_STORAGE_EXPECT):
    # "object-lock" (created with Object Lock, hence versioned: legal holds and quarantined evidence
    # outlive the lifecycle rule), "notifications" (put and delete notifications set through the S3
    # API, as MinIO's `mc event add` and AWS's EventBridge do). set_up_buckets creates locked buckets
    # when object-lock is expected.
    expect: frozenset[str] = frozenset()
    # "path" (MinIO, SeaweedFS, most self-hosted servers) or "virtual" (AWS's preferred bucket.host form).
    addressing_style: str = "path"
    # botocore's request_checksum_calculation / response_checksum_validation: "when_required" sends
    # only the checksums an operation needs (self-hosted servers differ in what optional ones they
    # accept); "when_supported" is boto3's own default since 1.36 (CRC32 on every upload).
    checksum_mode: str = "when_required"
    # "optional": a part carries a SHA-256 when the client sent one. "required": multipart uploads are
    # created with ChecksumAlgorithm=SHA256 and every part URL must carry one: what AWS S3 needs to
    # accept a part's x-amz-checksum-sha256 at all, and what MinIO then insists on for every part.
    part_checksums: str = "optional"

    @classmethod
    def read(cls, env: EnvReader) -> StorageSettings:
        endpoint = env.optional_url("DROPGATE_S3_ENDPOINT")
        sse = env.text("DROPGATE_SSE", "AES256")
        kms_key_id = env.optional_text("DROPGATE_SSE_KMS_KEY_ID")
        if sse not in SSE_ALGORITHMS:
            env.problems.append(f"DROPGATE_SSE={sse!r}: expected one of {', '.join(SSE_ALGORITHMS)}")
        elif kms_key_id and sse != "aws:kms":
            env.problems.append(f"DROPGATE_SSE_KMS_KEY_ID is set but DROPGATE_SSE is {sse!r}; "
                                "set DROPGATE_SSE=aws:kms to encrypt with that key")
        accept_missing = frozenset(env.words("DROPGATE_STORAGE_ACCEPT_MISSING", ()))
        if unknown := accept_missing - STORAGE_CAPABILITIES:
            env.problems.append(f"DROPGATE_STORAGE_ACCEPT_MISSING: {', '.join(sorted(unknown))} is not a capability; "
                                f"expected any of {', '.join(sorted(STORAGE_CAPABILITIES))}")
        expect = frozenset(env.words("DROPGATE_STORAGE_EXPECT", ()))
        if unknown := expect - CONFIGURED_CAPABILITIES:
            env.problems.append(f"DROPGATE_STORAGE_EXPECT: {', '.join(sorted(unknown))} is not configurable; "
                                f"expected any of {', '.join(sorted(CONFIGURED_CAPABILITIES))}")
        addressing = env.text("DROPGATE_S3_ADDRESSING_STYLE", "path")
        if addressing not in ("path", "virtual"):
            env.problems.append(f"DROPGATE_S3_ADDRESSING_STYLE={addressing!r}: expected path or virtual")
        checksums = env.text("DROPGATE_S3_CHECKSUMS", "when_required")
        if checksums not in ("when_required", "when_supported"):
            env.problems.append(f"DROPGATE_S3_CHECKSUMS={checksums!r}: expected when_required or when_supported")
        part_checksums = env.text("DROPGATE_S3_PART_CHECKSUMS", "optional")
        if part_checksums not in ("optional", "required"):
            env.problems.append(f"DROPGATE_S3_PART_CHECKSUMS={part_checksums!r}: expected optional or required")
        return cls(
            accept_missing=accept_missing, expect=expect, addressing_style=addressing, checksum_mode=checksums,
            part_checksums=part_checksums,
            endpoint_url=endpoint,
            public_endpoint_url=env.optional_url("DROPGATE_S3_PUBLIC_ENDPOINT") or endpoint,
            region=env.text("DROPGATE_S3_REGION", "us-east-1"),
            access_key_id=env.text("DROPGATE_S3_ACCESS_KEY"),
            secret_access_key=env.text("DROPGATE_S3_SECRET_KEY"),
            uploads_bucket=env.text("DROPGATE_UPLOADS_BUCKET", "dropgate-uploads"),
            quarantine_bucket=env.text("DROPGATE_QUARANTINE_BUCKET", "dropgate-quarantine"),
            allowed_origins=env.words("DROPGATE_ALLOWED_ORIGINS", ()),
            sse_algorithm=None if sse == "none" else sse,
            sse_kms_key_id=kms_key_id,
        )


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    pool_min_size: int
    pool_max_size: int
    connect_timeout_seconds: int

    @classmethod
    def read(cls, env: EnvReader) -> DatabaseSettings:
        url = env.text("DATABASE_URL")
        if url and not url.startswith(("postgresql://", "postgres://")) and "=" not in url:
            env.problems.append("DATABASE_URL: expected postgresql://... or a libpq key=value string")
        return cls(
            url=url,
            pool_min_size=env.integer("DROPGATE_DB_POOL_MIN", 1, minimum=0, maximum=100),
            pool_max_size=env.integer("DROPGATE_DB_POOL_MAX", 10, minimum=1, maximum=500),
            connect_timeout_seconds=env.integer("DROPGATE_DB_CONNECT_TIMEOUT", 5, minimum=1, maximum=120),
        )


@dataclass(frozen=True)
class ClamdSettings:
    """Where clamd is, and the limits its clamd.conf sets (docs/scan.md, "Limits").

    The limits are the one home of clamd's configuration: local-dev/clamav.py writes clamd.conf from
    them, a test holds manifests/base/clamd/clamd.conf to the same values, and the scan uses them for
    its own archive inspection (shared/scanning/archives.py) and for the reasons it gives the owner. Defaults
    cover a 1 GiB upload: a stream longer than StreamMaxLength, or content past any limit, is
    `unscannable`, never clean.
    """

    host: str
    port: int
    timeout_seconds: int
    chunk_size: int  # bytes per INSTREAM chunk; bounds the scan's memory
    stream_max_length: int = 1100 * MIB  # StreamMaxLength: above the largest upload (1 GiB)
    max_file_size: int = 1100 * MIB  # MaxFileSize: any one file, the upload itself or a file inside it
    # MaxScanSize counts the archive itself plus everything in it (clamd.conf(5)), so a 1 GiB archive
    # of 1 GiB of content needs 2 GiB; clamd cannot scan more than 4 GB in all.
    max_scan_size: int = 4000 * MIB
    max_recursion: int = 17  # MaxRecursion: clamd's default nesting depth
    max_files: int = 10_000  # MaxFiles: clamd's default
    max_scan_time_ms: int = 300_000  # MaxScanTime: inside Knative's request timeout for scan
    # Not clamd.conf: whose earlier clamd finding for identical bytes a scan may reuse (VERDICT_REUSE_SCOPES).
    reuse_verdicts: str = "same-owner"

    @classmethod
    def read(cls, env: EnvReader) -> ClamdSettings:
        host, port = env.address("DROPGATE_CLAMD_ADDRESS", ("127.0.0.1", 3310))
        reuse = env.text("DROPGATE_SCAN_REUSE_VERDICTS", cls.reuse_verdicts).lower()
        if reuse not in VERDICT_REUSE_SCOPES:
            env.problems.append(f"DROPGATE_SCAN_REUSE_VERDICTS={reuse!r}: expected {', '.join(VERDICT_REUSE_SCOPES)}")
        return cls(
            host=host,
            port=port,
            timeout_seconds=env.integer("DROPGATE_CLAMD_TIMEOUT", 300, minimum=1, maximum=3600),
            chunk_size=env.size("DROPGATE_SCAN_CHUNK_SIZE", MIB, minimum=4 * KIB, maximum=64 * MIB),
            stream_max_length=env.size("DROPGATE_CLAMD_STREAM_MAX_LENGTH", cls.stream_max_length, minimum=MIB,
                                       maximum=4000 * MIB),
            max_file_size=env.size("DROPGATE_CLAMD_MAX_FILE_SIZE", cls.max_file_size, minimum=MIB,
                                   maximum=4000 * MIB),
            max_scan_size=env.size("DROPGATE_CLAMD_MAX_SCAN_SIZE", cls.max_scan_size, minimum=MIB,
                                   maximum=4000 * MIB),
            max_recursion=env.integer("DROPGATE_CLAMD_MAX_RECURSION", cls.max_recursion, minimum=1, maximum=64),
            max_files=env.integer("DROPGATE_CLAMD_MAX_FILES", cls.max_files, minimum=1, maximum=1_000_000),
            max_scan_time_ms=env.integer("DROPGATE_CLAMD_MAX_SCAN_TIME_MS", cls.max_scan_time_ms, minimum=1000,
                                         maximum=600_000),
            reuse_verdicts=reuse if reuse in VERDICT_REUSE_SCOPES else cls.reuse_verdicts,
        )

    def clamd_conf(self) -> dict[str, str]:
        """The clamd.conf options that make clamd's verdict trustworthy, as clamd.conf(5) spells them.

        AlertExceedsMax and AlertEncrypted make clamd *say* when it stopped looking
        (Heuristics.Limits.Exceeded.*, Heuristics.Encrypted.*) instead of answering OK.
        """
        return {
            "StreamMaxLength": f"{self.stream_max_length // MIB}M",
            "MaxFileSize": f"{self.max_file_size // MIB}M",
            "MaxScanSize": f"{self.max_scan_size // MIB}M",
            "MaxRecursion": str(self.max_recursion),
            "MaxFiles": str(self.max_files),
            "MaxScanTime": str(self.max_scan_time_ms),
            "AlertExceedsMax": "yes",
            "AlertEncrypted": "yes",
            "AlertEncryptedArchive": "yes",
            "AlertEncryptedDoc": "yes",
            # A real detection found later in an archive still wins over a limit alert (clamd.conf(5)).
            "HeuristicScanPrecedence": "no",
        }


@dataclass(frozen=True)
class LimitSettings:
    max_upload_size: int
    min_upload_size: int
    default_part_size: int
    max_open_uploads_per_user: int
    max_bytes_per_user_per_day: int
    requests_per_minute: int
    url_expiry_seconds: int
    retention_days: int
    # Proxies in front of presign that append to X-Forwarded-For (ingress, Knative's activator and
    # queue-proxy...): the client's address for the audit log is the one the outermost of them saw.
    trusted_proxy_hops: int = 0

    @classmethod
    def read(cls, env: EnvReader) -> LimitSettings:
        return cls(
            max_upload_size=env.size("DROPGATE_MAX_UPLOAD_SIZE", GIB, minimum=1,
                                     maximum=S3_MAX_PARTS * S3_MAX_PART_SIZE),
            min_upload_size=env.size("DROPGATE_MIN_UPLOAD_SIZE", 1, minimum=1),
            default_part_size=env.size("DROPGATE_PART_SIZE", 8 * MIB, minimum=S3_MIN_PART_SIZE,
                                       maximum=S3_MAX_PART_SIZE),
            max_open_uploads_per_user=env.integer("DROPGATE_MAX_OPEN_UPLOADS", 10, minimum=1),
            max_bytes_per_user_per_day=env.size("DROPGATE_MAX_BYTES_PER_DAY", 20 * GIB, minimum=1),
            requests_per_minute=env.integer("DROPGATE_RATE_LIMIT_PER_MINUTE", 600, minimum=1),
            url_expiry_seconds=env.integer("DROPGATE_URL_EXPIRY", 900, minimum=60, maximum=7 * 24 * 3600),
            retention_days=env.integer("DROPGATE_RETENTION_DAYS", MAX_RETENTION_DAYS, minimum=1,
                                       maximum=MAX_RETENTION_DAYS),
            trusted_proxy_hops=env.integer("DROPGATE_TRUSTED_PROXY_HOPS", 0, minimum=0, maximum=10),
        )


@dataclass(frozen=True)
class ContentSettings:
    """What content is accepted: presign checks the declared type and name, scan the bytes (shared/scanning/content_policy.py)."""

    allowed_content_types: tuple[str, ...]  # "*", "type/*" or "type/subtype"
    denied_content: frozenset[str]  # of CONTENT_KINDS, refused whatever the allow-list says

    @classmethod
    def read(cls, env: EnvReader) -> ContentSettings:
        allowed = tuple(p.lower() for p in env.words("DROPGATE_ALLOWED_CONTENT_TYPES", ("*",)))
        bad = [p for p in allowed if p != "*" and not _MEDIA_PATTERN.match(p)]
        if bad or not allowed:
            env.problems.append(f"DROPGATE_ALLOWED_CONTENT_TYPES: {', '.join(bad) or 'empty'}: expected "
                                "comma-separated patterns, each *, type/* or type/subtype")
        denied = tuple(w.lower() for w in env.words("DROPGATE_DENIED_CONTENT", CONTENT_KINDS))
        unknown = [w for w in denied if w not in CONTENT_KINDS and not (w == "none" and len(denied) == 1)]
        if unknown or not denied:
            env.problems.append(f"DROPGATE_DENIED_CONTENT: {', '.join(unknown) or 'empty'}: expected some of "
                                f"{', '.join(CONTENT_KINDS)}, or none")
        return cls(allowed_content_types=allowed or ("*",),
                   denied_content=frozenset(w for w in denied if w in CONTENT_KINDS))


@dataclass(frozen=True)
class EventSettings:
    sink_url: str | None  # K_SINK, injected by a Knative SinkBinding; where emitted CloudEvents go
    webhook_token: str | None  # the bearer token storage sends with its notifications
    source: str  # CloudEvents `source` prefix for events dropgate itself emits
    # The uploads and quarantine buckets (same variables as the storage section): the storage
    # adapter ignores notifications about any other bucket, without needing storage credentials.
    owned_buckets: tuple[str, ...] = ("dropgate-uploads", "dropgate-quarantine")
    # presign's fast path: a completed upload's "object created" event goes to K_SINK at once, so a
    # lost storage notification costs no delay (the reconciliation pass stays the guarantee).
    emit_on_complete: bool = False
    # A token for the sink's audience, presented with every event sent (Knative's broker ingress
    # requires one with `authentication-oidc`): a projected service-account token, re-read as it rotates.
    sink_token_file: str | None = None

    @classmethod
    def read(cls, env: EnvReader) -> EventSettings:
        return cls(
            sink_url=env.optional_url("K_SINK"),
            webhook_token=env.optional_text("DROPGATE_WEBHOOK_TOKEN"),
            source=env.text("DROPGATE_EVENT_SOURCE", "dropgate"),
            owned_buckets=(env.text("DROPGATE_UPLOADS_BUCKET", "dropgate-uploads"),
                           env.text("DROPGATE_QUARANTINE_BUCKET", "dropgate-quarantine")),
            emit_on_complete=env.boolean("DROPGATE_EMIT_ON_COMPLETE", False),
            sink_token_file=env.optional_text("DROPGATE_SINK_TOKEN_FILE"),
        )


@dataclass(frozen=True)
class RetentionSettings:
    """How much one expire pass may do (shared/retention/expiry.py; docs/expire.md)."""

    batch_size: int  # rows locked and retired per transaction
    max_files: int  # rows expired or abandoned per pass
    stale_upload_seconds: int  # a pending upload older than this is abandoned
    orphan_grace_seconds: int  # objects and rows younger than this are left alone by the sweep
    max_listed_objects: int  # objects listed per bucket per pass
    time_budget_seconds: int  # a pass stops starting new work after this

    @classmethod
    def read(cls, env: EnvReader) -> RetentionSettings:
        return cls(
            batch_size=env.integer("DROPGATE_EXPIRE_BATCH_SIZE", 500, minimum=1, maximum=1000),
            max_files=env.integer("DROPGATE_EXPIRE_MAX_FILES", 10_000, minimum=1),
            stale_upload_seconds=env.integer("DROPGATE_STALE_UPLOAD_AGE", 24 * 3600, minimum=60),
            orphan_grace_seconds=env.integer("DROPGATE_ORPHAN_GRACE", 3600, minimum=60),
            max_listed_objects=env.integer("DROPGATE_EXPIRE_MAX_LISTED", 10_000, minimum=1),
            # The pass answers only when it ends, so it must end inside Knative's response-start timeout
            # (300 s by default; dropgate_local/platform_limits.py checks the manifests against it).
            time_budget_seconds=env.integer("DROPGATE_EXPIRE_TIME_BUDGET", 240, minimum=10, maximum=540),
        )


@dataclass(frozen=True)
class ObservabilitySettings:
    """Tracing export and the /metrics guard (shared/platform/tracing.py, shared/platform/metrics.py; docs/operations.md)."""

    traces_exporter: str  # OTEL_TRACES_EXPORTER: none (default), console or otlp
    otlp_endpoint: str | None  # OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://otel-collector:4318
    metrics_token: str | None  # DROPGATE_METRICS_TOKEN: when set, GET /metrics needs it as a bearer token
    # DROPGATE_VITALS_CACHE_SECONDS: how long scan reuses the database and clamd reads behind the vitals
    # gauges, so several Prometheus replicas (or a reloaded dashboard) cost one read (shared/platform/vitals.py).
    vitals_cache_seconds: int = 15

    @classmethod
    def read(cls, env: EnvReader) -> ObservabilitySettings:
        exporter = env.text("OTEL_TRACES_EXPORTER", "none").lower()
        if exporter not in TRACES_EXPORTERS:
            env.problems.append(f"OTEL_TRACES_EXPORTER={exporter!r}: expected one of {', '.join(TRACES_EXPORTERS)}")
        return cls(
            traces_exporter=exporter,
            otlp_endpoint=env.optional_url("OTEL_EXPORTER_OTLP_ENDPOINT"),
            metrics_token=env.optional_text("DROPGATE_METRICS_TOKEN"),
            vitals_cache_seconds=env.integer("DROPGATE_VITALS_CACHE_SECONDS", 15, minimum=0, maximum=300),
        )


@dataclass(frozen=True)
class ReconcileSettings:
    """How the reconciliation pass re-drives uploads whose notification was lost (shared/retention/reconcile.py)."""

    grace_seconds: int  # a completed upload without a verdict this long is re-driven; also the gap between re-drives
    scan_timeout_seconds: int  # a row `scanning` this long, with no scan running it, is stuck
    max_attempts: int  # re-drives without a verdict before the upload is marked failed
    max_redrives: int  # uploads re-driven or failed per pass
    max_checked: int  # unfinished (pending) uploads looked up in storage per pass
    # Rescans after a signature update (shared/scanning/rescan.py): files clean within this many days are read again.
    rescan_days: int = 7
    rescan_max_per_run: int = 2000  # rescan requests per pass; the rest follow on the next ping
    time_budget_seconds: int = 240  # a pass stops starting new batches after this; the next ping goes on

    @classmethod
    def read(cls, env: EnvReader) -> ReconcileSettings:
        return cls(
            # Well below the stale age (24 h), after which expire abandons a pending upload and deletes its object.
            grace_seconds=env.integer("DROPGATE_RECONCILE_GRACE", 600, minimum=60, maximum=6 * 3600),
            # Knative cuts a scan request at the scan Service's timeoutSeconds (600 s); a row untouched for
            # much longer has no scan behind it.
            scan_timeout_seconds=env.integer("DROPGATE_RECONCILE_SCAN_TIMEOUT", 1800, minimum=60, maximum=24 * 3600),
            max_attempts=env.integer("DROPGATE_RECONCILE_MAX_ATTEMPTS", 3, minimum=1, maximum=100),
            max_redrives=env.integer("DROPGATE_RECONCILE_MAX_PER_RUN", 1000, minimum=1, maximum=100_000),
            max_checked=env.integer("DROPGATE_RECONCILE_MAX_CHECKED", 1000, minimum=1, maximum=100_000),
            rescan_days=env.integer("DROPGATE_RESCAN_DAYS", cls.rescan_days, minimum=0, maximum=MAX_RETENTION_DAYS),
            rescan_max_per_run=env.integer("DROPGATE_RESCAN_MAX_PER_RUN", cls.rescan_max_per_run, minimum=1,
                                           maximum=100_000),
            # Like expire's: the pass's reply must start inside Knative's response-start timeout (300 s).
            time_budget_seconds=env.integer("DROPGATE_RECONCILE_TIME_BUDGET", cls.time_budget_seconds, minimum=10,
                                            maximum=540),
        )


_SECTIONS: Final[dict[str, type]] = {
    "storage": StorageSettings,
    "database": DatabaseSettings,
    "clamd": ClamdSettings,
    "auth": AuthSettings,
    "event_auth": EventAuthSettings,
    "limits": LimitSettings,
    "content": ContentSettings,
    "events": EventSettings,
    "retention": RetentionSettings,
    "reconcile": ReconcileSettings,
    "observability": ObservabilitySettings,
    "webhooks": WebhookSettings,
}


class Settings:
    """The sections one function loaded. Asking for a section it did not load is a bug, not a default."""

    def __init__(self, sections: Mapping[str, object]):
        self._sections = dict(sections)

    def _section(self, name: str):  # noqa: ANN202 - typed by the properties below
        try:
            return self._sections[name]
        except KeyError:
            raise SettingsError([f"settings section {name!r} was not loaded by this function"]) from None

    @property
    def storage(self) -> StorageSettings:
        return self._section("storage")

    @property
    def database(self) -> DatabaseSettings:
        return self._section("database")

    @property
    def clamd(self) -> ClamdSettings:
        return self._section("clamd")

    @property
    def auth(self) -> AuthSettings:
        return self._section("auth")

    @property
    def event_auth(self) -> EventAuthSettings:
        return self._section("event_auth")

    @property
    def limits(self) -> LimitSettings:
        return self._section("limits")

    @property
    def content(self) -> ContentSettings:
        return self._section("content")

    @property
    def events(self) -> EventSettings:
        return self._section("events")

    @property
    def retention(self) -> RetentionSettings:
        return self._section("retention")

    @property
    def reconcile(self) -> ReconcileSettings:
        return self._section("reconcile")

    @property
    def observability(self) -> ObservabilitySettings:
        return self._section("observability")

    @property
    def webhooks(self) -> WebhookSettings:
        return self._section("webhooks")

    def has(self, name: str) -> bool:
        return name in self._sections

    @classmethod
    def from_env(cls, sections: Iterable[str], environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader(os.environ if environ is None else environ)
        loaded = {}
        for name in sections:
            if name not in _SECTIONS:
                raise ValueError(f"unknown settings section {name!r}; known: {', '.join(_SECTIONS)}")
            loaded[name] = _SECTIONS[name].read(env)
        if env.problems:
            raise SettingsError(env.problems)
        return cls(loaded)


def required_variables(sections: Iterable[str]) -> list[str]:
    """Names of the variables a function with these sections cannot start without (for manifests checks)."""
    try:
        Settings.from_env(sections, environ={})
    except SettingsError as exc:
        return sorted(p.split(" ", 1)[0] for p in exc.problems if p.endswith("is required but not set"))
    return []
