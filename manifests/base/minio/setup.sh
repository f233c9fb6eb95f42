#!/bin/sh
# Configures MinIO for dropgate. Idempotent: the Job may run on every deploy.
#   - the uploads bucket (object lock, so uploads can carry legal holds) and the quarantine bucket
#   - a storage user for the functions, limited to the two buckets
#   - lifecycle: objects expire after DROPGATE_RETENTION_DAYS (30) days, old versions a day later
#   - incomplete multipart uploads: MinIO ignores AbortIncompleteMultipartUpload lifecycle rules
#     and purges them itself after `api stale_uploads_expiry`, set to 24h here
#   - CORS for the web origins (per bucket where MinIO supports it, else the server-wide setting)
#   - bucket notifications of both buckets to dropgate-storage-events, with the bearer token, over
#     https, kept on MinIO's disk (queue_dir) until storage-events takes them
#   - a KMS is required for SSE: the script stops with a clear message without one
#   - default encryption of both buckets: DROPGATE_SSE (SSE-S3, or SSE-KMS with DROPGATE_SSE_KMS_KEY_ID);
#     MinIO must have a KMS (KES, or MINIO_KMS_SECRET_KEY for a single key) for either
set -eu
export HOME=/tmp        # mc keeps its aliases in ~/.mc; the root filesystem is read-only
alias_name=dropgate
arn="arn:minio:sqs::dropgate:webhook"

echo "waiting for MinIO at ${MINIO_ENDPOINT} ..."
attempt=0
# A set-up user, not root: its policy (setup-policy.json) allows exactly the admin and bucket actions below.
until mc alias set "$alias_name" "$MINIO_ENDPOINT" "$MINIO_SETUP_USER" "$MINIO_SETUP_PASSWORD" >/dev/null 2>&1 \
      && mc admin info "$alias_name" >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 60 ]; then echo "MinIO did not answer" >&2; exit 1; fi
  sleep 5
done

# SSE needs a KMS on MinIO (KES for production; MINIO_KMS_SECRET_KEY, one static key, for small
# installs): without one every encrypted write fails, so stop here and say so instead of later.
# https://min.io/docs/minio/linux/operations/server-side-encryption.html
if [ "${DROPGATE_SSE:-AES256}" != none ] && ! mc admin kms key status "$alias_name" >/dev/null 2>&1; then
  echo "MinIO at ${MINIO_ENDPOINT} has no KMS, and DROPGATE_SSE=${DROPGATE_SSE:-AES256} asks for encryption:" >&2
  echo "configure KES (or MINIO_KMS_SECRET_KEY for a single static key) first (docs/deploy.md), or set DROPGATE_SSE=none" >&2
  exit 1
fi

# Object lock can only be enabled when a bucket is created; --with-lock also turns on versioning.
mc mb --ignore-existing --with-lock "$alias_name/$DROPGATE_UPLOADS_BUCKET"
# Quarantine too: a held infected file must survive the 30-day lifecycle rule (object lock honours holds).
mc mb --ignore-existing --with-lock "$alias_name/$DROPGATE_QUARANTINE_BUCKET"

# The functions' credentials (Secret dropgate-s3) and what they may do: objects of the two buckets.
cat > /tmp/policy.json <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow",
   "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketVersions",
              "s3:ListBucketMultipartUploads", "s3:GetBucketObjectLockConfiguration",
              "s3:GetBucketVersioning", "s3:GetBucketNotification"],
   "Resource": ["arn:aws:s3:::${DROPGATE_UPLOADS_BUCKET}", "arn:aws:s3:::${DROPGATE_QUARANTINE_BUCKET}"]},
  {"Effect": "Allow",
   "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
              "s3:DeleteObjectVersion", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
              "s3:GetObjectTagging", "s3:PutObjectTagging", "s3:GetObjectLegalHold",
              "s3:PutObjectLegalHold", "s3:GetObjectRetention"],
   "Resource": ["arn:aws:s3:::${DROPGATE_UPLOADS_BUCKET}/*", "arn:aws:s3:::${DROPGATE_QUARANTINE_BUCKET}/*"]}
]}
JSON
mc admin policy create "$alias_name" dropgate-functions /tmp/policy.json
mc admin user add "$alias_name" "$DROPGATE_S3_ACCESS_KEY" "$DROPGATE_S3_SECRET_KEY"
mc admin policy attach "$alias_name" dropgate-functions --user "$DROPGATE_S3_ACCESS_KEY" 2>/dev/null \
  || echo "policy dropgate-functions already attached to $DROPGATE_S3_ACCESS_KEY"

# Lifecycle, written whole so a re-run replaces instead of adding rules.
for bucket in "$DROPGATE_UPLOADS_BUCKET" "$DROPGATE_QUARANTINE_BUCKET"; do
  cat > /tmp/lifecycle.json <<JSON
{"Rules": [
  {"ID": "dropgate-retention", "Status": "Enabled", "Filter": {"Prefix": ""},
   "Expiration": {"Days": ${DROPGATE_RETENTION_DAYS}},
   "NoncurrentVersionExpiration": {"NoncurrentDays": 1}},
  {"ID": "dropgate-delete-markers", "Status": "Enabled", "Filter": {"Prefix": ""},
   "Expiration": {"ExpiredObjectDeleteMarker": true}}
]}
JSON
  mc ilm import "$alias_name/$bucket" < /tmp/lifecycle.json
done

# CORS: browsers PUT parts directly and must read ETag to complete a multipart upload.
{
  echo "<CORSConfiguration><CORSRule>"
  old_ifs=$IFS; IFS=,
  for origin in $DROPGATE_ALLOWED_ORIGINS; do echo "<AllowedOrigin>$origin</AllowedOrigin>"; done
  IFS=$old_ifs
  # POST: POST policy forms and Uppy 6 starting/completing its multipart upload; DELETE: its abort.
  echo "<AllowedMethod>PUT</AllowedMethod><AllowedMethod>POST</AllowedMethod><AllowedMethod>DELETE</AllowedMethod>"
  echo "<AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod>"
  echo "<AllowedHeader>*</AllowedHeader>"
  echo "<ExposeHeader>ETag</ExposeHeader><ExposeHeader>x-amz-checksum-sha256</ExposeHeader>"
  echo "<ExposeHeader>x-amz-request-id</ExposeHeader><MaxAgeSeconds>3600</MaxAgeSeconds>"
  echo "</CORSRule></CORSConfiguration>"
} > /tmp/cors.xml
mc cors set "$alias_name/$DROPGATE_UPLOADS_BUCKET" /tmp/cors.xml \
  || echo "this MinIO has no per-bucket CORS; relying on api cors_allow_origin"

# Server-wide settings: allowed origins and the stale multipart purge (1 day).
changed=$(mc admin config set "$alias_name" api \
  cors_allow_origin="$DROPGATE_ALLOWED_ORIGINS" stale_uploads_expiry=24h stale_uploads_cleanup_interval=1h 2>&1)
echo "$changed"

# The notification target: storage-events inside the cluster, MinIO sends "Bearer <token>". https
# once Knative's cluster-local-domain-tls gives the Service a certificate (manifests/cluster/).
# queue_dir: MinIO keeps a notification the webhook did not take on its own disk and sends it again
# (webhook settings, min.io/docs/minio/linux/reference/minio-server/settings/notifications/webhook-service.html);
# without it a notification that fails once is dropped and only the reconcile pass finds the upload.
webhook="${WEBHOOK_SCHEME:-https}://dropgate-storage-events.${POD_NAMESPACE}.svc.cluster.local${WEBHOOK_PATH}"
out=$(mc admin config set "$alias_name" notify_webhook:dropgate \
  endpoint="$webhook" auth_token="$DROPGATE_WEBHOOK_TOKEN" \
  queue_dir="${MINIO_NOTIFY_QUEUE_DIR:?the directory on the MinIO servers for undelivered notifications}" \
  queue_limit=100000 2>&1)
echo "$out"
case "$changed $out" in
  *restart*) echo "restarting MinIO to apply the configuration"; mc admin service restart "$alias_name" --json
             attempt=0
             until mc admin info "$alias_name" >/dev/null 2>&1; do
               attempt=$((attempt + 1)); [ "$attempt" -lt 60 ] || exit 1; sleep 5
             done ;;
esac

for bucket in "$DROPGATE_UPLOADS_BUCKET" "$DROPGATE_QUARANTINE_BUCKET"; do
  mc event add "$alias_name/$bucket" "$arn" --event put,delete --ignore-existing
done

# Default encryption (the functions also ask for it on every write they cause; docs/operations.md).
for bucket in "$DROPGATE_UPLOADS_BUCKET" "$DROPGATE_QUARANTINE_BUCKET"; do
  case "${DROPGATE_SSE:-AES256}" in
    AES256) mc encrypt set sse-s3 "$alias_name/$bucket" ;;
    aws:kms) mc encrypt set sse-kms "${DROPGATE_SSE_KMS_KEY_ID:?DROPGATE_SSE=aws:kms needs DROPGATE_SSE_KMS_KEY_ID for MinIO}" \
               "$alias_name/$bucket" ;;
    none) echo "DROPGATE_SSE=none: $bucket keeps no default encryption" ;;
    *) echo "unknown DROPGATE_SSE=$DROPGATE_SSE" >&2; exit 1 ;;
  esac
done
echo "MinIO is configured for dropgate"
