"""The completion check: whether the parts a client names add up to the upload it declared.

presign runs it before it asks storage to complete a multipart upload (UploadService.complete); an
upload that does not add up is aborted and its parts deleted, never completed.
"""

from __future__ import annotations

from shared.uploads.model import StoredPart, UploadRow
from shared.uploads.requests import CompletedPart


def completion_problem(row: UploadRow, claimed: list[CompletedPart], stored: list[StoredPart]) -> str | None:
    """Why the claimed parts are not this upload's, in words; None when they are."""
    numbers = [p.number for p in claimed]
    if len(set(numbers)) != len(numbers):
        return "a part number is listed twice"
    expected = set(range(1, row.part_count + 1))
    if set(numbers) != expected:
        missing = sorted(expected - set(numbers))[:10]
        return f"the part list does not match the upload's {row.part_count} parts (missing {missing})"
    held = {p.number: p for p in stored}
    for part in claimed:
        stored_part = held.get(part.number)
        if stored_part is None:
            return f"part {part.number} is not in storage"
        if stored_part.etag != part.etag:
            return f"part {part.number}: ETag {part.etag} does not match storage's {stored_part.etag}"
    total = sum(held[n].size for n in expected)
    if total != row.declared_size:
        return f"storage holds {total} bytes but {row.declared_size} were declared"
    return None
