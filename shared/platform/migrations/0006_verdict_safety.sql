-- Verdict safety (docs/scan.md): a file is downloadable only when it was fully scanned and found clean.
--
-- * 'unscannable' replaces 'failed': clamd stopped looking (a limit, an encrypted archive or document),
--   the scanner kept failing past the retry budget, or the stored object is not what was declared.
--   Never downloadable; an admin may release it (or a 'rejected' file), which is audited.
-- * 'released': an admin let an unscannable or rejected file through, with who and why in the audit log.
-- * detected_type: the type sniffed from the bytes; downloads carry it, never the client's claim.
-- * signature_version: clamd's database version (VERSION) that produced the verdict; when clamd's
--   database advances, the reconcile pass re-scans recent clean files (rescan_requested_version
--   remembers which version a rescan was already asked for, so a resumed pass asks once).
-- * sha256_blocklist: admin-managed known-bad hashes; a listed file is infected without clamd.

ALTER TABLE uploads DROP CONSTRAINT uploads_status_check;
ALTER TABLE uploads DROP CONSTRAINT uploads_scan_verdict_check;
UPDATE uploads SET status = 'unscannable' WHERE status = 'failed';
UPDATE uploads SET scan_verdict = 'unscannable' WHERE scan_verdict = 'failed';
ALTER TABLE uploads ADD CONSTRAINT uploads_status_check CHECK (status IN (
    'pending', 'uploaded', 'scanning',
    'clean', 'infected', 'rejected', 'unscannable',  -- scan verdicts
    'released',                                      -- an admin let an unscannable/rejected file through
    'aborted', 'abandoned', 'expired'));
ALTER TABLE uploads ADD CONSTRAINT uploads_scan_verdict_check
    CHECK (scan_verdict IN ('clean', 'infected', 'rejected', 'unscannable'));

ALTER TABLE uploads ADD COLUMN detected_type text;
ALTER TABLE uploads ADD COLUMN signature_version integer;
ALTER TABLE uploads ADD COLUMN rescan_requested_version integer;

-- The rescan's question: clean files scanned recently, newest first.
CREATE INDEX uploads_clean_scanned ON uploads (scanned_at DESC) WHERE status = 'clean';
-- A blocklisted hash finds the files that carry it.
CREATE INDEX uploads_sha256 ON uploads (sha256) WHERE sha256 IS NOT NULL;

CREATE TABLE sha256_blocklist (
    sha256     text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    reason     text        NOT NULL,
    added_by   text        NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now()
);
