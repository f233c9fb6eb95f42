"""Every storage backend whose notifications dropgate reads: its webhook path and its parser.

Adding a backend is one parser module (`events/<backend>.py`, a pure function from the posted bytes
to `Adapted`) plus one line here; the storage_events function serves a `POST /<name>` route for
each entry, and the webhook authenticates, forwards and answers the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from events.minio import parse_minio_notification
from events.notifications import Adapted, OwnedBuckets
from events.seaweedfs import parse_seaweedfs_notification

# (body, the buckets dropgate owns, when the webhook received it) -> the events and what was ignored.
# `received_at` dates what the backend does not date itself (SeaweedFS's removals).
Parser = Callable[[bytes, OwnedBuckets, datetime], Adapted]

PARSERS: Final[dict[str, Parser]] = {
    "minio": lambda body, owned, received_at: parse_minio_notification(body, owned_buckets=owned),
    "seaweedfs": lambda body, owned, received_at: parse_seaweedfs_notification(
        body, owned_buckets=owned, received_at=received_at),
}
