"""The expire pass's preview (`dropgate-dev expire-now --dry-run`): against real SeaweedFS and PostgreSQL,
it lists exactly what the next pass then retires and deletes, and changes nothing itself."""

from __future__ import annotations

import time
import uuid

import psycopg

from tests.test_expire import s3, world  # noqa: F401 - the fixtures


def test_the_preview_is_what_the_pass_then_does_and_changes_nothing(world) -> None:  # noqa: F811
    s = world.storage
    due = world.add_upload("clean", expires=world.clock.now)  # past retention once the clock moves
    due_pending = world.add_upload("pending", expires=world.clock.now)  # due and stale: step 1 takes it
    held = world.add_upload("clean", expires=world.clock.now, held=True)
    world.clock.advance(hours=23)
    stale = world.add_upload("pending")  # stale once the clock passes 24 h from its creation
    live = world.add_upload("clean")
    orphan = f"uploads/2026/01/01/{uuid.uuid4()}"
    world.put(s.uploads_bucket, orphan)
    world.clock.advance(hours=26)

    job = world.job()
    preview = job.would_retire()
    orphans = {bucket: job.would_delete_orphans(bucket) for bucket in (s.uploads_bucket, s.quarantine_bucket)}
    assert job.count_held() == 1

    assert {(d.row.id, d.outcome) for d in preview} == {
        (due["id"], "expired"), (due_pending["id"], "expired"), (stale["id"], "abandoned")}
    assert {d.row.id: d.buckets for d in preview}[due["id"]] == [s.uploads_bucket]
    listed, bounded = orphans[s.uploads_bucket]
    assert [(obj["Key"], owner) for obj, owner in listed] == [(orphan, None)] and not bounded
    assert orphans[s.quarantine_bucket] == ([], False)
    # Nothing changed: rows, objects, audit, events.
    assert {world.row(r["id"])["status"] for r in (due, due_pending, stale)} == {"clean", "pending"}
    assert world.exists(s.uploads_bucket, due["object_key"]) and world.exists(s.uploads_bucket, orphan)
    assert world.audit() == [] and world.published == []

    summary = world.run()

    retired = {(e["upload_id"], e["action"]) for e in world.audit() if e["action"].startswith("retention.")
               and e["action"] != "retention.orphan_deleted"}
    assert retired == {(d.row.id, f"retention.{d.outcome}") for d in preview}
    assert [e["detail"]["key"] for e in world.audit(action="retention.orphan_deleted")] == [orphan]
    assert (summary.expired, summary.abandoned, summary.held, summary.orphans_deleted) == (2, 1, 1, 1)
    assert world.row(live["id"])["status"] == "clean" and world.row(held["id"])["status"] == "clean"


def test_the_preview_sees_rows_a_pass_is_retiring_and_does_not_wait_for_them(world) -> None:  # noqa: F811
    """The pass's queries lock FOR UPDATE SKIP LOCKED; the preview runs them unlocked. Locked, it would
    skip what a running pass holds (and, worse, make that pass skip what the preview holds)."""
    due = world.add_upload("clean", expires=world.clock.now)
    world.clock.advance(hours=1)
    with psycopg.connect(world.database_url) as holder, holder.transaction():
        holder.execute("SELECT id FROM uploads WHERE id = %s FOR UPDATE", (due["id"],))  # as a pass's batch does
        started = time.monotonic()
        assert [d.row.id for d in world.job().would_retire()] == [due["id"]]
        assert time.monotonic() - started < 10
