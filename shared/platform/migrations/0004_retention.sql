-- expire: where each bucket sweep stopped, and the indexes the retention pass reads through.

-- One row per sweep ('objects:<bucket>', 'multipart:<bucket>'). A pass locks its row
-- (FOR UPDATE SKIP LOCKED) for one page of work, so two overlapping passes never sweep the
-- same page, and saves where the next page starts in the same transaction as that page's
-- changes: a pass killed midway repeats at most the page it was on.
CREATE TABLE retention_cursors (
    name        text        PRIMARY KEY,
    position    jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- {"start_after"} or {"key_marker", "upload_id_marker"}
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Files older than the retention are due even if their expires_at says later; same predicate as
-- uploads_expiring so the planner can combine both.
CREATE INDEX uploads_live_created ON uploads (created_at)
    WHERE NOT legal_hold AND status NOT IN ('expired', 'aborted', 'abandoned');

-- Stale multipart uploads: pending rows, oldest first.
CREATE INDEX uploads_pending_created ON uploads (created_at) WHERE status = 'pending';

-- A multipart upload storage lists is matched to its row by its UploadId.
CREATE INDEX uploads_storage_upload_id ON uploads (storage_upload_id) WHERE storage_upload_id IS NOT NULL;
