-- metadata: what storage holds at each bucket/key, as its notifications report it.
--
-- One row per object location (the uploads bucket, the quarantine bucket, a copy), because S3
-- sequencers order the events of one bucket/key only. The metadata function applies an event
-- only when it is newer than the row (shared/metadata.py), mirrors what it learns about an
-- upload's own location onto `uploads`, and keeps rows for objects no upload owns (upload_id
-- NULL): the orphans the retention sweep deletes.
CREATE TABLE storage_objects (
    bucket          text        NOT NULL,
    object_key      text        NOT NULL,
    upload_id       uuid        REFERENCES uploads (id) ON DELETE SET NULL,  -- NULL: an orphan
    present         boolean     NOT NULL,             -- false after a removal
    size            bigint      CHECK (size >= 0),
    etag            text,
    content_type    text,
    version_id      text,
    sequencer       text        CHECK (sequencer ~ '^[0-9A-Fa-f]+$'),
    event_time      timestamptz NOT NULL,
    last_event_id   text        NOT NULL,             -- the storage CloudEvent applied last
    last_event_type text        NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    removed_at      timestamptz,
    PRIMARY KEY (bucket, object_key)
);
CREATE INDEX storage_objects_upload ON storage_objects (upload_id);
-- The retention sweep's question: which stored objects belong to no upload, oldest first.
CREATE INDEX storage_objects_orphans ON storage_objects (first_seen_at) WHERE upload_id IS NULL AND present;
-- A copy in another bucket (the quarantine) is matched to its upload by key alone.
CREATE INDEX uploads_object_key ON uploads (object_key);
