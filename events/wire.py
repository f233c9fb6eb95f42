"""Reading and writing CloudEvents: the one reader that collects every problem, and the one writer.

`Reader` takes the attributes and the JSON `data` of a CloudEvent (binary or structured mode,
cloudevents sdk) and records each problem instead of stopping at the first, so a function answers
one 400 naming all of them (`InvalidEvent`, a `ValueError`). Times are RFC 3339 (CloudEvents spec,
"time"). events/types.py builds every typed event on these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Final, TypeVar
from uuid import UUID

from cloudevents.http import CloudEvent

SPEC_VERSION: Final = "1.0"
JSON_CONTENT_TYPE: Final = "application/json"
_HEX: Final = re.compile(r"[0-9A-Fa-f]+")
T = TypeVar("T")


class InvalidEvent(ValueError):
    """A CloudEvent that is not one dropgate understands; `problems` names every reason."""

    def __init__(self, problems: list[str], *, event_id: str | None = None):
        self.problems = list(problems)
        self.event_id = event_id
        where = f"CloudEvent {event_id!r}" if event_id else "CloudEvent"
        super().__init__(f"invalid {where}: " + "; ".join(self.problems))


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, microseconds only when there are some (round-trips exactly)."""
    if value.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp (`Z` or an offset, any fraction) as an aware UTC datetime."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return parsed.astimezone(UTC)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an event's `data`, from events/schemas/."""
    return json.loads(resources.files("events").joinpath("schemas", name).read_text(encoding="utf-8"))


class Reader:
    """Reads a CloudEvent's attributes and `data`, collecting every problem instead of stopping at the first."""

    def __init__(self, event: CloudEvent, types: Mapping[str, object] | frozenset[str]):
        self.problems: list[str] = []
        self.attributes = dict(event.get_attributes())
        self.id = self._attribute("id")
        self.type = self._attribute("type")
        self.source = self._attribute("source")
        if self.type and self.type not in types:
            self.problems.append(f"type {self.type!r} is not one of {', '.join(sorted(types))}")
        self.time = self._time()
        self.data = self._data(event.data)

    def _attribute(self, name: str) -> str:
        value = self.attributes.get(name)
        if not isinstance(value, str) or not value:
            self.problems.append(f"attribute {name} is required")
            return ""
        return value

    def optional_attribute(self, name: str) -> str | None:
        value = self.attributes.get(name)
        return value if isinstance(value, str) and value else None

    def _time(self) -> datetime:
        raw = self.attributes.get("time")
        if not isinstance(raw, str) or not raw:
            self.problems.append("attribute time is required")
            return datetime.fromtimestamp(0, UTC)
        try:
            return parse_time(raw)
        except ValueError:
            self.problems.append(f"attribute time {raw!r} is not an RFC 3339 timestamp")
            return datetime.fromtimestamp(0, UTC)

    def _data(self, data: Any) -> dict[str, Any]:
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):
                self.problems.append("data is not JSON")
                return {}
        if not isinstance(data, dict):
            self.problems.append("data must be a JSON object")
            return {}
        return data

    # -- data fields --

    def text(self, name: str, *, optional: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            self.problems.append(f"data.{name} must be a non-empty string" + (" or null" if optional else ""))
            return None
        return value

    def size(self, name: str) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.problems.append(f"data.{name} must be a non-negative integer or null")
            return None
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name)
        if not isinstance(value, bool):
            self.problems.append(f"data.{name} must be true or false")
            return False
        return value

    def upload_id(self) -> UUID:
        """data.upload_id, which must also be the subject (dropgate's own events are about one upload)."""
        raw = self.data.get("upload_id")
        try:
            upload_id = UUID(raw) if isinstance(raw, str) else None
        except ValueError:
            upload_id = None
        if upload_id is None:
            self.problems.append("data.upload_id must be a UUID")
            return UUID(int=0)
        subject = self.attributes.get("subject")
        if subject != str(upload_id):
            self.problems.append(f"subject {subject!r} must be the upload id {upload_id}")
        return upload_id

    def done(self, make: type[T], **fields: Any) -> T:
        if not self.problems:
            try:
                return make(**fields)
            except ValueError as exc:  # an invariant of the class that the checks above did not name
                self.problems.append(str(exc))
        raise InvalidEvent(self.problems, event_id=self.id or None)


def cloudevent(*, type_: str, source: str, id_: str, time: datetime, subject: str, data: dict[str, Any],
                extensions: Mapping[str, str] | None = None) -> CloudEvent:
    attributes = {"specversion": SPEC_VERSION, "type": type_, "source": source, "id": id_,
                  "time": format_time(time), "subject": subject, "datacontenttype": JSON_CONTENT_TYPE,
                  **(extensions or {})}
    return CloudEvent(attributes, data)


def is_hex(text: str) -> bool:
    return bool(_HEX.fullmatch(text))


def hex_or_problem(read: Reader, name: str) -> str | None:
    value = read.text(name, optional=True)
    if value is not None and not is_hex(value):
        read.problems.append(f"data.{name} must be hexadecimal")
        return None
    return value
