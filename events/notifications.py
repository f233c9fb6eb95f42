"""What the storage adapters share: their result, their error, and how they derive ids.

An adapter (`events.minio`, `events.seaweedfs`) is a pure function from the
bytes storage posted to an `Adapted`: the storage events it maps to
CloudEvents, and what it ignored and why (directories, staging areas, other
buckets, metadata-only changes), so the webhook can answer with both counts
and log each decision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from events.types import StorageObjectEvent


class MalformedNotification(ValueError):
    """The body is not a notification this adapter understands; `problems` names every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"malformed {source} notification: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Ignored:
    """A change in the notification that produces no CloudEvent, and why."""

    what: str  # "dropgate-uploads/.uploads/abc/0001_x.part", "Records[1]"...
    reason: str


@dataclass(frozen=True)
class Adapted:
    events: tuple[StorageObjectEvent, ...] = ()
    ignored: tuple[Ignored, ...] = ()


@dataclass(frozen=True)
class OwnedBuckets:
    """The buckets dropgate owns; notifications about any other bucket are ignored."""

    names: frozenset[str]

    @classmethod
    def of(cls, names: Collection[str]) -> OwnedBuckets:
        return cls(frozenset(name for name in names if name))

    def __contains__(self, bucket: object) -> bool:
        return bucket in self.names


def json_object(body: bytes, source: str) -> dict[str, Any]:
    """The body as a JSON object, or MalformedNotification."""
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MalformedNotification(source, [f"body is not JSON: {exc}"]) from None
    if not isinstance(parsed, dict):
        raise MalformedNotification(source, ["body must be a JSON object"])
    return parsed


def digest(*parts: object) -> str:
    """A stable 32-hex-digit id from the values that identify one storage change (same input, same id)."""
    canonical = json.dumps(parts, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
