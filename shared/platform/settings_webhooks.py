"""The `webhooks` settings section: where dropgate may deliver signed webhooks, and how hard it tries.

Registered with the other sections in shared/platform/settings.py. Read by presign (an endpoint is
checked when it is registered) and by the webhooks function (checked again at every delivery, and
the retry schedule); docs/webhooks.md explains each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from shared.platform.egress import IpNetwork
from shared.platform.env import EnvReader

# Standard Webhooks' example schedule (spec/standard-webhooks.md, "Deliverability and reliability"):
# immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h: about three days in all.
DEFAULT_RETRY_SCHEDULE: Final = ("5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class WebhookSettings:
    """Egress rules and retry policy of outbound webhooks."""

    # Only https:// endpoints (the default, and production's): the spec's "Enforcing HTTPS".
    require_https: bool
    # Addresses outside the public Internet (loopback, private, link-local with the cloud metadata
    # service, ...) are refused unless inside one of these networks: the local stack and tests allow
    # 127.0.0.0/8 and ::1 explicitly; production allows none (SSRF, docs/webhooks.md).
    allowed_networks: tuple[IpNetwork, ...]
    retry_delays_seconds: tuple[int, ...]  # after the first attempt; len + 1 attempts in all
    timeout_seconds: float  # connect and each read, per attempt (the spec recommends 15-30 s)
    max_response_bytes: int  # what is read of a receiver's answer; the rest is dropped
    rotation_grace_seconds: int  # how long the previous secret keeps signing after a rotation
    sweep_batch: int  # due deliveries one retry sweep claims
    time_budget_seconds: int  # an event's fan-out or a sweep stops starting attempts after this

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays_seconds) + 1

    @classmethod
    def read(cls, env: EnvReader) -> WebhookSettings:
        return cls(
            require_https=env.boolean("DROPGATE_WEBHOOK_REQUIRE_HTTPS", True),
            allowed_networks=_networks(env, "DROPGATE_WEBHOOK_ALLOWED_NETWORKS"),
            retry_delays_seconds=_delays(env, "DROPGATE_WEBHOOK_RETRY_SCHEDULE"),
            timeout_seconds=float(env.integer("DROPGATE_WEBHOOK_TIMEOUT", 15, minimum=1, maximum=60)),
            max_response_bytes=env.size("DROPGATE_WEBHOOK_MAX_RESPONSE", 64 * 1024, minimum=0, maximum=1024 * 1024),
            rotation_grace_seconds=env.integer("DROPGATE_WEBHOOK_ROTATION_GRACE", 24 * 3600, minimum=0,
                                               maximum=30 * 86400),
            sweep_batch=env.integer("DROPGATE_WEBHOOK_SWEEP_BATCH", 200, minimum=1, maximum=10_000),
            # Inside the Trigger's delivery timeout and Knative's response-start timeout (300 s).
            time_budget_seconds=env.integer("DROPGATE_WEBHOOK_TIME_BUDGET", 50, minimum=5, maximum=240),
        )


def _networks(env: EnvReader, name: str) -> tuple[IpNetwork, ...]:
    found = []
    for word in env.words(name, ()):
        try:
            found.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            env.problems.append(f"{name}: {word!r} is not a network such as 127.0.0.0/8 or ::1/128")
    return tuple(found)


def _delays(env: EnvReader, name: str) -> tuple[int, ...]:
    words = env.words(name, DEFAULT_RETRY_SCHEDULE)
    delays = []
    for word in words:
        number, unit = word[:-1], word[-1:].lower()
        if unit not in _UNITS or not number.isdigit() or int(number) == 0:
            env.problems.append(f"{name}: {word!r} is not a delay such as 5s, 5m, 2h or 1d")
            continue
        delays.append(int(number) * _UNITS[unit])
    if len(delays) > 20:
        env.problems.append(f"{name}: at most 20 retries")
    return tuple(delays)
