-- dropgate schema, version 1: uploads, their audit trail, and event idempotency.
-- States are text with CHECK constraints (not enums) so later migrations can add one
-- in a transaction.

CREATE TABLE uploads (
    id                  uuid PRIMARY KEY,
    owner               text        NOT NULL,                 -- the JWT subject
    bucket              text        NOT NULL,
    object_key          text        NOT NULL,                 -- server-generated, never the user's filename
    filename            text        NOT NULL,                 -- sanitised original name, for Content-Disposition
    content_type        text        NOT NULL,                 -- as declared by the client
    declared_size       bigint      NOT NULL CHECK (declared_size >= 0),
    part_size           bigint      NOT NULL CHECK (part_size > 0),
    part_count          integer     NOT NULL CHECK (part_count BETWEEN 1 AND 10000),
    storage_upload_id   text,                                 -- S3 multipart UploadId
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                            'pending',     -- created, parts being uploaded
                            'uploaded',    -- multipart completed, waiting for a scan
                            'scanning',    -- a scan is running
                            'clean', 'infected', 'rejected', 'failed',  -- scan verdicts
                            'aborted',     -- cancelled by the user or by a failed check
                            'abandoned',   -- stale multipart upload aborted by expire
                            'expired')),   -- retention passed, object deleted
    declared_sha256     text        CHECK (declared_sha256 ~ '^[0-9a-f]{64}$'),
    sha256              text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),  -- computed by the scan
    etag                text,                                 -- as storage reports it
    stored_size         bigint,                               -- as storage reports it
    stored_content_type text,
    scan_verdict        text        CHECK (scan_verdict IN ('clean', 'infected', 'rejected', 'failed')),
    scan_detail         text,                                 -- signature name or rejection reason
    scanned_at          timestamptz,
    legal_hold          boolean     NOT NULL DEFAULT false,
    storage_sequencer   text,                                 -- last storage event applied (ordering)
    storage_event_time  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    expires_at          timestamptz NOT NULL,
    UNIQUE (bucket, object_key)
);

CREATE INDEX uploads_owner_created ON uploads (owner, created_at DESC);
CREATE INDEX uploads_status_updated ON uploads (status, updated_at);
-- The retention sweep reads only rows that can still expire.
CREATE INDEX uploads_expiring ON uploads (expires_at)
    WHERE NOT legal_hold AND status NOT IN ('expired', 'aborted', 'abandoned');

-- Who did what, when, from where. Rows are only ever inserted.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    upload_id   uuid        REFERENCES uploads (id) ON DELETE SET NULL,
    actor       text        NOT NULL,   -- user subject, or 'system:<function>'
    action      text        NOT NULL,   -- e.g. upload.created, scan.verdict, retention.expired
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_ip   inet,
    trace_id    text
);
CREATE INDEX audit_log_upload ON audit_log (upload_id, at);

-- At-least-once delivery: a consumer records each CloudEvent id it has applied,
-- in the same transaction as the effect, so a redelivery changes nothing.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
