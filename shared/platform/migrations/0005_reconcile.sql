-- reconcile: how often the reconciliation pass re-drove an upload that had no verdict, and when.
--
-- The pass (shared/reconcile.py) re-emits an upload's "object created" CloudEvent when its
-- notification seems lost; after DROPGATE_RECONCILE_MAX_ATTEMPTS re-drives without a verdict it
-- marks the upload `failed` (status_reason says why), so no file waits forever.
ALTER TABLE uploads ADD COLUMN redrive_attempts integer NOT NULL DEFAULT 0 CHECK (redrive_attempts >= 0);
ALTER TABLE uploads ADD COLUMN last_redrive_at timestamptz;  -- by the pass's clock; spaces re-drives a grace period apart

-- The pass's questions: uploads still waiting for a verdict, oldest first.
CREATE INDEX uploads_awaiting_verdict ON uploads (bucket, status, coalesce(last_redrive_at, completed_at, created_at))
    WHERE status IN ('pending', 'uploaded', 'scanning');
