-- Verdict reuse for identical bytes (docs/scan.md, "Verdict reuse"; shared/scanning/reuse.py).
--
-- Before streaming an upload through clamd, scan looks for an earlier upload whose SHA-256 (computed
-- by dropgate's own full scan) is the one this upload declared and whose verdict came from clamd's
-- current signature database: the statuses whose clamd finding is a fact about the bytes. Nothing is
-- added to the row; the lookup only needs this index (uploads_sha256 serves it too, less exactly).
CREATE INDEX uploads_reusable_verdicts ON uploads (sha256, signature_version)
    WHERE status IN ('clean', 'rejected', 'infected') AND sha256 IS NOT NULL;
