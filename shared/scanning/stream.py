"""One pass over an object's bytes: hashed, counted, sniffed and searched for script while clamd reads them.

A reader thread fetches (and hashes) up to `PREFETCH_CHUNKS` chunks ahead while the scan sends the
previous ones to clamd, so storage and clamd work at the same time; memory stays bounded by the
queue, whatever the file size.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from typing import Any, Final

from shared.platform.storage import IncompleteRead
from shared.scanning import content_policy as content


class MeasuredStream:
    """Yields the object's chunks while hashing them, counting bytes and keeping the head for sniffing.

    A reader thread fetches (and hashes) up to `PREFETCH_CHUNKS` chunks ahead while the
    caller sends the previous ones to clamd, so storage and clamd work at the same time;
    memory stays bounded by the queue.
    """

    PREFETCH_CHUNKS: Final = 4

    def __init__(self, body: Any, chunk_size: int, expected_length: int, declared_type: str = "") -> None:
        self._body = body
        # Declared markup is searched too: an HTML fragment sniffs as plain text, yet a browser runs it.
        self._declared_markup = content.kind_of(declared_type.split(";")[0].strip().lower()) == "markup"
        self._chunk_size = chunk_size
        self.expected_length = expected_length
        self.sha256 = hashlib.sha256()
        self.length = 0
        self.head = b""
        self.markup: content.ActiveMarkup | None = None  # set when the file is HTML/SVG/XHTML
        self.finished = False
        self.etag: str | None = None  # storage's ETag of the object read, when the reader knows it
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=self.PREFETCH_CHUNKS)
        self._stop = threading.Event()

    def _read_ahead(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._body.read(self._chunk_size)
                if not chunk:
                    break
                self.sha256.update(chunk)
                self._put(chunk)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _watch_markup(self) -> None:
        """Markup can carry script anywhere, not only in the head: such files are searched whole."""
        if self._declared_markup or content.kind_of(content.sniff(self.head)) == "markup":
            self.markup = content.ActiveMarkup()
            self.markup.feed(self.head)  # every byte so far; the caller feeds what follows, once

    def __iter__(self) -> Iterator[bytes]:
        reader = threading.Thread(target=self._read_ahead, name="scan-read-ahead", daemon=True)
        reader.start()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.length += len(item)
                rest = item
                if len(self.head) < content.SNIFF_BYTES:
                    taken = content.SNIFF_BYTES - len(self.head)
                    self.head += item[:taken]
                    rest = item[taken:]
                    if len(self.head) >= content.SNIFF_BYTES:
                        self._watch_markup()
                if self.markup is not None and rest:
                    self.markup.feed(rest)
                yield item
        finally:
            # The consumer stopped (done, clamd gone, or an error): let the reader finish.
            self._stop.set()
            reader.join(timeout=30)
        if len(self.head) < content.SNIFF_BYTES:
            self._watch_markup()  # a file shorter than the sniffed window
        if self.length != self.expected_length:
            raise IncompleteRead(f"storage sent {self.length} of {self.expected_length} bytes")
        self.finished = True
