-- presign: why an upload ended where it did, and the per-user request counter.

-- A human-readable reason for aborted/rejected/failed states (e.g. "size mismatch at completion").
ALTER TABLE uploads ADD COLUMN status_reason text;

-- Fixed one-minute windows, one row per user and minute; incremented atomically with
-- INSERT .. ON CONFLICT so every stateless presign instance counts into the same row.
CREATE TABLE request_rate_windows (
    subject      text        NOT NULL,
    window_start timestamptz NOT NULL,
    requests     integer     NOT NULL,
    PRIMARY KEY (subject, window_start)
);
-- Old windows are deleted by presign itself (see shared/limits.py); this index finds them.
CREATE INDEX request_rate_windows_start ON request_rate_windows (window_start);

-- The per-user quotas count a user's recent and open uploads.
CREATE INDEX uploads_owner_status ON uploads (owner, status);
