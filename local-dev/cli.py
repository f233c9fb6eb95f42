"""`dropgate-dev`: run the local stack and the dev tools.

    dropgate-dev up                               start everything, Ctrl-C stops everything
    dropgate-dev token --sub alice --roles uploader   a dev JWT the local presign accepts
    dropgate-dev event-token scan                     the token the local broker sends scan
    dropgate-dev env                              the functions' environment, as shell exports
    dropgate-dev migrate                          apply database migrations (uses DATABASE_URL)
    dropgate-dev preflight [--overlay prod]       check a cluster has what the overlay needs (kubectl)

Operator commands (local-dev/ops.py, docs/operations.md); a table by default, --json for scripts:
    dropgate-dev history <upload-id>              row + audit trail + storage now + broker deliveries
    dropgate-dev replay-dead-letters              re-post dead-lettered events to the broker
    dropgate-dev rescan <upload-id>... | --all-clean   scan clean/unscannable files again (audited)
    dropgate-dev release <upload-id> --reason R   let an unscannable/rejected file be downloaded (audited)
    dropgate-dev blocklist list|add|remove        the known-bad SHA-256 list (audited)
    dropgate-dev expire-now [--dry-run]           run the expire pass now, or list what it would delete
    dropgate-dev webhooks deliveries|replay       the signed webhooks' delivery log; send again (docs/webhooks.md)
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from pathlib import Path

from dropgate_local import ops, webhook_ops
from dropgate_local.processes import StartupError
from dropgate_local.stack import (
    DEFAULT_DATA_DIR,
    FUNCTIONS,
    HOST,
    LocalStack,
    StackPorts,
)


def _up(args: argparse.Namespace) -> int:
    stack = LocalStack(args.data_dir, StackPorts.fixed(), keep_postgres_running=False)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting the dropgate local stack in {stack.data_dir} ...", flush=True)
        stack.start_all()
        _print_endpoints(stack)
        while not stopping.is_set():
            for name, child in stack.children.items():
                if not child.running:
                    print(f"{name} exited (code {child.process.returncode}); log: {child.log_path}\n{child.tail()}",
                          file=sys.stderr)
                    return 1
            stopping.wait(1.0)
        return 0
    except StartupError as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the local stack ...", flush=True)
        stack.stop()


def _print_endpoints(stack: LocalStack) -> None:
    ports = stack.ports
    lines = ["", "dropgate local stack is up (all on 127.0.0.1):",
             f"  {'upload page':<15} http://{HOST}:{ports.web}/   (open it, then \"Sign in (dev)\")"]
    for name in FUNCTIONS:
        lines.append(f"  {name:<15} {ports.function_url(name)}   (health: {ports.function_url(name)}/healthz)")
    lines += [
        f"  {'S3 (SeaweedFS)':<15} {ports.s3_endpoint}   access key {stack.secrets.s3_access_key}",
        f"  {'PostgreSQL':<15} {stack.database_url}",
        f"  {'clamd':<15} {HOST}:{ports.clamd}",
        f"  {'broker':<15} http://{HOST}:{ports.router}/   (routes by the Triggers in manifests/overlays/dev; GET /events shows deliveries)",
        f"  {'dev OIDC':<15} http://{HOST}:{ports.dev_oidc}/dev-oidc/jwks.json",
        "",
        "  a dev token:    .venv/bin/dropgate-dev token --sub alice --roles uploader",
        "  the settings:   .venv/bin/dropgate-dev env",
        f"  logs:           {stack.logs_dir}",
        "Ctrl-C stops everything; data stays in the data folder for the next start.",
    ]
    print("\n".join(lines), flush=True)


def _load_state(data_dir: Path) -> dict:
    path = data_dir / "stack.json"
    if not path.exists():
        raise SystemExit(f"no local stack state in {data_dir}; start it with `dropgate-dev up` first")
    return json.loads(path.read_text())


def _token(args: argparse.Namespace) -> int:
    from dropgate_local.devauth import DevSigningKey

    env = _load_state(args.data_dir)["env"]
    key = DevSigningKey.load_or_create(args.data_dir / "dev-oidc")
    roles = [role for role in args.roles.split(",") if role]
    print(key.mint(subject=args.sub, roles=roles, issuer=env["DROPGATE_OIDC_ISSUER"],
                   audience=env["DROPGATE_OIDC_AUDIENCE"], ttl_seconds=args.ttl))
    return 0


def _event_token(args: argparse.Namespace) -> int:
    """What the local broker presents to a function (or, with --sub/--audience, any other sender)."""
    from dropgate_local.identity import (
        ClusterIssuer,
        cluster_issuer_url,
        event_token,
        function_identities,
    )
    from dropgate_local.router import load_manifests
    from dropgate_local.stack import HOST, SOURCE_DIR, service_name

    issuer = ClusterIssuer(args.data_dir, cluster_issuer_url(HOST, _load_state(args.data_dir)["ports"]["dev_oidc"]))
    identity = function_identities(load_manifests(SOURCE_DIR / "manifests" / "overlays" / "dev"))[
        service_name(args.function)]
    print(event_token(issuer, identity, subject_=args.sub, audience=args.audience, ttl_seconds=args.ttl))
    return 0


def _env(args: argparse.Namespace) -> int:
    for name, value in _load_state(args.data_dir)["env"].items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from shared.platform.migrate import main as migrate_main

    return migrate_main()


def _preflight(args: argparse.Namespace) -> int:
    from dropgate_local import preflight
    from dropgate_local.router import load_manifests
    from dropgate_local.stack import SOURCE_DIR

    documents = load_manifests(preflight.overlay_path(args.overlay, SOURCE_DIR))
    return preflight.run(args.overlay, documents, args.kubeconfig or preflight.default_kubeconfig(), args.namespace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dropgate-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"where the local stack keeps its state (default {DEFAULT_DATA_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the whole local stack").set_defaults(run=_up)
    token = sub.add_parser("token", help="mint a dev JWT signed by the local dev key")
    token.add_argument("--sub", required=True, help="the user (JWT subject)")
    token.add_argument("--roles", default="uploader", help="comma-separated: uploader, admin")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_token)
    event_token = sub.add_parser("event-token", help="mint the token the local broker sends a function with "
                                 "(Knative's authentication-oidc), e.g. to curl a CloudEvent at it")
    event_token.add_argument("function", choices=["scan", "metadata", "expire", "reconcile"])
    event_token.add_argument("--sub", default=None, help="another sender (default: the function's first Trigger)")
    event_token.add_argument("--audience", default=None, help="another audience (default: the function's)")
    event_token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    event_token.set_defaults(run=_event_token)
    sub.add_parser("env", help="print the functions' environment as shell exports").set_defaults(run=_env)
    sub.add_parser("migrate", help="apply database migrations to DATABASE_URL").set_defaults(run=_migrate)
    check = sub.add_parser("preflight", help="check a cluster (through kubectl) has the CRDs, Knative settings, "
                           "broker and Secrets an overlay needs; without a reachable cluster, list the checks")
    check.add_argument("--overlay", default="prod", help="dev, prod, or a kustomization's path (default prod)")
    check.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG, else ~/.kube/config")
    check.add_argument("--namespace", default=None, help="default: the namespace the overlay renders into")
    check.set_defaults(run=_preflight)
    ops.register(sub)
    webhook_ops.register(sub)  # `webhooks replay`, `deliveries`, `endpoints` (local-dev/webhook_ops.py)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
