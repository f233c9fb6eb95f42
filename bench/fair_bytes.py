"""Fresh bytes for the benchmarks: random, unique per upload and per part, and cheap to make.

Why not one block repeated: storage, clamd and the page cache all see through repetition (clamd
caches a clean verdict by the file's hash and answers a second scan of the same bytes without
scanning), so a repeated payload measures caches, not work. Why not os.urandom: on this machine
it makes ~200 MB/s, slower than the uploads it would feed. So: the AES-CTR keystream of a key
drawn per upload (~2 GB/s with AES-NI), which is indistinguishable from random to every server
here. Part `n` starts its counter at n << 64, so no two parts of an upload share a byte of stream,
and the same (key, part) gives the same bytes again: a part is made twice (once to hash it, once
to send it, as a browser reads a file twice) without holding the whole file in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIB = 1024 * 1024
CHUNK = 8 * MIB
_ZEROS = bytes(CHUNK)


class FreshBytes:
    """The bytes of one upload (or one file): `part(n, length)` is part n of them."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or os.urandom(16)  # one key per upload: no two uploads share bytes

    def part(self, number: int, length: int) -> bytes:
        """Part `number` (1-based like S3's), `length` bytes (at most CHUNK)."""
        if length > CHUNK:
            raise ValueError(f"a part of at most {CHUNK} bytes, not {length}")
        counter = (number << 64).to_bytes(16, "big")
        encryptor = Cipher(algorithms.AES(self.key), modes.CTR(counter)).encryptor()
        return encryptor.update(_ZEROS[:length])

    def write_file(self, path: Path, size: int) -> Path:
        """`size` fresh bytes to `path`, CHUNK at a time (a 1 GiB file is never held whole), readable by clamd."""
        with path.open("wb") as out:
            for number, offset in enumerate(range(0, size, CHUNK), 1):
                out.write(self.part(number, min(CHUNK, size - offset)))
        path.chmod(0o644)
        return path


def fresh_file(path: Path, size: int) -> Path:
    """A file of `size` bytes no server of this run has seen (a new key each call)."""
    return FreshBytes().write_file(path, size)
