"""What the operator commands talk to, and the little they share (local-dev/ops.py lists the commands).

Where they connect: with a local stack (`<data-dir>/stack.json` exists) to its database,
storage and broker; otherwise, or with `--environ`, to what the environment says, as the
functions read it (`DATABASE_URL`, `DROPGATE_S3_*`, `K_SINK` = the Broker's ingress).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.platform.audit import Actor
from shared.platform.delivery import EventSink
from shared.platform.settings import Settings


class OpsError(RuntimeError):
    """A command that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """What the commands talk to: the functions' environment, the broker ingress, the local router."""

    env: Mapping[str, str]
    broker_url: str | None  # K_SINK: the Broker's ingress (the local router's in a local stack)
    router_url: str | None  # the local router's own API (/events, /pingsources); None in a cluster
    dead_letter_file: Path | None
    # The token the broker's ingress requires (Knative authentication-oidc). On a cluster:
    # `kubectl create token dropgate-operator --audience eventing.knative.dev/broker/dropgate/dropgate > f`
    # and DROPGATE_SINK_TOKEN_FILE=f; in a local stack, minted for the same operator account.
    sink_token_file: str | None = None

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> Target:
        state_path = args.data_dir / "stack.json"
        if not args.environ and state_path.exists():
            state = json.loads(state_path.read_text())
            router = f"http://127.0.0.1:{state['ports']['router']}"
            env = dict(state["env"])
            dead_letters = args.data_dir.resolve() / "logs" / "dead-letter.jsonl"
            token = str(operator_token_file(args.data_dir.resolve(), state["ports"]["dev_oidc"]))
        else:
            env, router, dead_letters = dict(os.environ), None, None
            token = env.get("DROPGATE_SINK_TOKEN_FILE")
        broker = args.broker or env.get("K_SINK") or None
        return cls(env=env, broker_url=broker, router_url=args.router or router, dead_letter_file=dead_letters,
                   sink_token_file=token)

    def sink(self) -> EventSink:
        return EventSink(self.broker_url, token_file=self.sink_token_file)

    def settings(self, *sections: str) -> Settings:
        return Settings.from_env(sections, self.env)


OPERATOR_SERVICE_ACCOUNT = "dropgate-operator"  # manifests/base/eventing/eventpolicy.yaml allows it


def operator_token_file(data_dir: Path, dev_oidc_port: int) -> Path:
    """A fresh broker token for the operator account of a local stack, as `kubectl create token` gives one."""
    from dropgate_local.identity import (
        ClusterIssuer,
        broker_audience,
        cluster_issuer_url,
        subject,
        write_token,
    )

    path = data_dir / "tokens" / f"{OPERATOR_SERVICE_ACCOUNT}.token"
    issuer = ClusterIssuer(data_dir, cluster_issuer_url("127.0.0.1", dev_oidc_port))
    write_token(path, issuer.mint(subject("dropgate", OPERATOR_SERVICE_ACCOUNT), broker_audience("dropgate", "dropgate")))
    return path


def operator(args: argparse.Namespace) -> Actor:
    return Actor(f"operator:{args.operator or getpass.getuser()}")


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # urlopen on purpose: an operator-given URL
        return json.loads(response.read())


def post_json(url: str, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # urlopen on purpose: an operator-given URL
        return json.loads(response.read())


def parse_upload_id(upload_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(upload_id)
    except ValueError:
        raise OpsError(f"{upload_id!r} is not an upload id (a UUID)") from None


def parse_when(text: str) -> datetime:
    """An ISO 8601 time (`2026-12-01`, `2026-12-01T09:00`, `…Z`, `…+01:00`); without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise OpsError(f"{text!r} is not a time: use ISO 8601, e.g. 2026-12-01 or 2026-12-01T09:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
