"""The part-size policy: how a file of a given size is cut into S3 multipart parts (the one home of that rule).

S3's limits (5 MiB .. 5 GiB a part, at most 10,000 parts) live with the settings
(`shared/platform/settings.py`); the default part size is `DROPGATE_PART_SIZE`.
"""

from __future__ import annotations

import math

from shared.platform.settings import (
    MIB,
    S3_MAX_PART_SIZE,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE,
)

MAX_PARTS_PER_BATCH = 1000  # part URLs signed per request


def choose_part_size(size: int, default_part_size: int) -> int:
    """The default (8 MiB) unless the file needs bigger parts to stay within 10,000; whole MiB, at least 5 MiB."""
    needed = math.ceil(size / S3_MAX_PARTS) if size else 0
    part_size = max(default_part_size, S3_MIN_PART_SIZE, math.ceil(needed / MIB) * MIB)
    return min(part_size, S3_MAX_PART_SIZE)


def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def part_length(number: int, size: int, part_size: int) -> int:
    """Bytes in part `number` (1-based): full parts, then whatever is left."""
    return min(part_size, size - (number - 1) * part_size) if size else 0


def uppy_part_size(size: int) -> int:
    """@uppy/aws-s3's chunk size when the page sets no `getChunkSize` (5.x and 6.x alike): max(5 MiB,
    ceil(size / 10,000)) (6.3.1 src/S3Uploader.ts #getChunkSize and its MIN_CHUNK_SIZE clamp). Signing
    Uppy's parts by this rule is what lets each part URL carry the exact length of the part Uppy cuts."""
    return max(S3_MIN_PART_SIZE, math.ceil(size / S3_MAX_PARTS))
