-- The browser's own handle for a file it uploads with Uppy 6's signRequest mode (docs/uploader.md).
--
-- @uppy/aws-s3 6.x asks the signer for a PutObject (or CreateMultipartUpload) again each time it
-- retries a file from the start (after the network dropped, or a reload): the same file under the same
-- requested key. presign answers the retry with the pending upload it registered the first time,
-- instead of a second registration that would count against the open-upload limit and the daily bytes.
ALTER TABLE uploads ADD COLUMN client_ref text;
CREATE INDEX uploads_pending_client_refs ON uploads (owner, client_ref) WHERE status = 'pending' AND client_ref IS NOT NULL;
