"""Recorded storage notifications and the CloudEvents they must become, as paired files.

    tests/events/<storage>/<name>.input.json      the body storage POSTed
    tests/events/<storage>/<name>.expected.json   the CloudEvents it maps to, in order, as
                                                  [{"attributes": {...}, "data": {...}}]; [] when ignored

Provenance of each pair: tests/events/README.md. Every test loads them through this module.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cloudevents.http import CloudEvent

from events.minio import parse_minio_notification
from events.notifications import Adapted, OwnedBuckets
from events.seaweedfs import parse_seaweedfs_notification

HERE: Final = Path(__file__).parent
STORAGES: Final = ("minio", "seaweedfs")
# The buckets the recordings were made with, as the adapters' owned buckets.
OWNED: Final = {
    "minio": OwnedBuckets.of(["images", "dropgate-uploads", "dropgate-quarantine"]),
    "seaweedfs": OwnedBuckets.of(["dg-uploads", "dg-quarantine", "dg-versioned"]),
}
# SeaweedFS removals carry the time they were received; the pairs fix it.
RECEIVED_AT: Final = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def pair_names(storage: str) -> list[str]:
    return sorted(path.name.removesuffix(".input.json") for path in (HERE / storage).glob("*.input.json"))


def all_pairs() -> list[tuple[str, str]]:
    return [(storage, name) for storage in STORAGES for name in pair_names(storage)]


def load_input(storage: str, name: str) -> bytes:
    return (HERE / storage / f"{name}.input.json").read_bytes()


def load_expected(storage: str, name: str) -> list[dict[str, Any]]:
    return json.loads((HERE / storage / f"{name}.expected.json").read_text(encoding="utf-8"))


def adapt(storage: str, body: bytes, owned: OwnedBuckets | None = None) -> Adapted:
    """The storage's adapter, as the recordings were made (their buckets, a fixed receipt time)."""
    owned = owned or OWNED[storage]
    if storage == "minio":
        return parse_minio_notification(body, owned_buckets=owned)
    return parse_seaweedfs_notification(body, owned_buckets=owned, received_at=RECEIVED_AT)


def as_plain(event: CloudEvent) -> dict[str, Any]:
    return {"attributes": dict(sorted(event.get_attributes().items())), "data": event.data}
