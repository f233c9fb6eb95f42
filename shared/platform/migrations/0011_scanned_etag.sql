-- The ETag of the very object the scan judged (docs/scan.md, "Replaced after its verdict").
--
-- A browser's one-write upload (a POST policy; Uppy's Companion mode) carries a credential that stays
-- valid for minutes and names a fixed key: used again after the verdict, it could replace the judged
-- bytes. `uploads.etag` follows storage's events (the metadata function), so it would follow the
-- replacement too; this column only ever holds what the scan read. Downloads are signed only while
-- storage still holds that object, and an "object created" event for another one sends the upload back
-- to the scan.
ALTER TABLE uploads ADD COLUMN scanned_etag text;
