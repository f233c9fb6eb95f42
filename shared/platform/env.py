"""Reading environment variables into typed values, collecting every problem instead of stopping at the first.

shared/platform/settings.py declares the sections; this is how each variable is read and checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")
_SIZE_UNITS: Final = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
                      "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
_SIZE_PATTERN: Final = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")


REQUIRED: Final = object()


class EnvReader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        self.problems: list[str] = []

    def _raw(self, name: str, default: object) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            if default is REQUIRED:
                self.problems.append(f"{name} is required but not set")
            return None
        return value.strip()

    def _parse(self, name: str, default: object, parse: Callable[[str], T], placeholder: T) -> T:
        raw = self._raw(name, default)
        if raw is None:
            return placeholder if default is REQUIRED else default  # type: ignore[return-value]
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}={raw!r}: {exc}")
            return placeholder

    def text(self, name: str, default: object = REQUIRED) -> str:
        return self._parse(name, default, lambda raw: raw, "")

    def optional_text(self, name: str) -> str | None:
        return self._parse(name, None, lambda raw: raw, None)

    def integer(self, name: str, default: object = REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        return self._parse(name, default, lambda raw: _bounded(int(raw), minimum, maximum), 0)

    def size(self, name: str, default: object = REQUIRED, *, minimum: int | None = None,
             maximum: int | None = None) -> int:
        return self._parse(name, default, lambda raw: _bounded(parse_size(raw), minimum, maximum), 0)

    def url(self, name: str, default: object = REQUIRED) -> str:
        return self._parse(name, default, _parse_url, "")

    def optional_url(self, name: str) -> str | None:
        return self._parse(name, None, _parse_url, None)

    def words(self, name: str, default: object = REQUIRED) -> tuple[str, ...]:
        return self._parse(name, default, _parse_words, ())

    def address(self, name: str, default: object = REQUIRED) -> tuple[str, int]:
        return self._parse(name, default, _parse_address, ("", 0))

    def boolean(self, name: str, default: object = REQUIRED) -> bool:
        return self._parse(name, default, _parse_bool, False)


def parse_size(raw: str) -> int:
    """Byte count from '1073741824', '1GiB', '8 MiB' or '10MB' (decimal)."""
    match = _SIZE_PATTERN.match(raw)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError("expected a byte size such as 8MiB, 1GiB or 1048576")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _bounded(value: int, minimum: int | None, maximum: int | None) -> int:
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum}")
    return value


def _parse_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("expected an http(s) URL such as http://127.0.0.1:8333")
    return raw.rstrip("/")


def _parse_words(raw: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in raw.split(",") if word.strip())


def _parse_address(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port such as 127.0.0.1:3310")
    return host.strip("[]"), int(port)


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
