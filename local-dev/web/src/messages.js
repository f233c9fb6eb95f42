// What the page tells a person: every error and status in plain words, never a status code alone.

const UNITS = ['bytes', 'KB', 'MB', 'GB', 'TB']

/** Sizes as Uppy's Dashboard shows them (powers of 1024), so both halves of the page agree. */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return ''
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024
    unit += 1
  }
  return unit === 0 ? `${value} bytes` : `${Number(value.toFixed(value < 10 ? 1 : 0))} ${UNITS[unit]}`
}

export function formatWait(seconds) {
  if (seconds == null) return 'later'
  if (seconds < 90) return `in ${Math.max(1, Math.round(seconds))} seconds`
  if (seconds < 90 * 60) return `in about ${Math.round(seconds / 60)} minutes`
  return `in about ${Math.round(seconds / 3600)} hours`
}

/** The file statuses presign reports, as the files list shows them. */
export const STATUS_LABELS = {
  pending: 'Uploading',
  uploaded: 'Checking for viruses…',
  scanning: 'Checking for viruses…',
  clean: 'Ready to download',
  infected: 'Infected: blocked',
  rejected: 'Rejected',
  unscannable: 'Could not be checked',
  released: 'Released by an admin',
  aborted: 'Cancelled',
  abandoned: 'Never finished',
  expired: 'Expired',
}

/** Why a file cannot be downloaded, or what it is waiting for. */
export function statusExplanation(file) {
  switch (file.status) {
    case 'pending':
      return 'The upload has not finished yet.'
    case 'uploaded':
    case 'scanning':
      return 'The file is being checked for viruses; it can be downloaded once it is found clean.'
    case 'infected':
      return `A virus was found${file.scan_verdict && file.scan_verdict !== 'infected' ? ` (${file.scan_verdict})` : ''}. The file was quarantined and will not be served.`
    case 'rejected':
      return `The file was refused: ${file.status_reason || 'it is not what it claimed to be'}.`
    case 'unscannable':
      // scan_detail says what stopped the check, e.g. "archive nested deeper than 17 levels".
      return `The virus check could not look at all of it${file.scan_detail ? ` (${file.scan_detail})` : ''}, so it will not be served.`
    case 'released':
      return 'The virus check could not clear it, and an administrator released it for download.'
    case 'aborted':
      return 'The upload was cancelled.'
    case 'abandoned':
      return 'The upload was never finished and has been cleaned up.'
    case 'expired':
      return 'The file reached the end of its retention period and was deleted.'
    default:
      return ''
  }
}

/** One sentence for an error of the API, of storage or of the network. */
export function describeError(err, { filename } = {}) {
  const name = filename ? `“${filename}”` : 'This file'
  // @uppy/aws-s3 6 reports storage's refusals as S3ServiceError (status, S3's <Code> as serviceCode, body)
  // and a request the network dropped as S3NetworkError with code 'NETWORK' (6.3.1 src/s3-client/utils.ts
  // and S3mini.ts). Told apart by their fields: a minified bundle renames the classes.
  const fromStorage = isStorageError(err)
  const status = err?.status
  const storageCode = fromStorage
    ? (err.serviceCode ?? /<Code>([^<]+)<\/Code>/.exec(err.body ?? '')?.[1])
    : undefined
  if (storageCode === 'BadDigest' || storageCode === 'XAmzContentChecksumMismatch') {
    return `A part of ${name} was damaged on the way (its checksum did not match). Retry the upload.`
  }
  if (fromStorage && ['EntityTooLarge', 'EntityTooSmall', 'SignatureDoesNotMatch'].includes(storageCode)) {
    return `Storage refused ${name}: its size is not the one the upload was signed for. Add the file again.`
  }
  if (isNetworkError(err) || status === 0) {
    return 'The network connection was lost. Uploads retry by themselves; check your connection.'
  }
  switch (status) {
    case 400:
      if (err.detail?.startsWith('upload aborted')) {
        return `${name} did not arrive intact and was discarded (${err.detail.replace(/^upload aborted: /, '')}). Please upload it again.`
      }
      return `The upload of ${name} was refused: ${err.detail ?? 'invalid request'}.`
    case 401:
      return 'Your sign-in has expired. Please sign in again.'
    case 403:
      if (fromStorage) return `Storage refused ${name} (its signed URL did not match or has expired). Retry the upload.`
      return 'You are not allowed to do this (your account lacks the uploader role).'
    case 404:
      return `${name} no longer exists.`
    case 409:
      return `${name} is not ready yet: ${err.detail ?? 'wrong state'}.`
    case 410:
      return `${name} has expired and is no longer available.`
    case 413: {
      const limit = /limit of (\d+) bytes/.exec(err.detail ?? '')
      return limit
        ? `${name} is too large: files can be at most ${formatBytes(Number(limit[1]))}.`
        : `${name} is too large to upload.`
    }
    case 415:
      return `${name} is a type of file that is not accepted here.`
    case 429:
      if (/requests in a minute/.test(err.detail ?? '')) {
        return `Too many requests at once; the upload slows down and continues ${formatWait(err.retryAfter)}.`
      }
      if (/still open/.test(err.detail ?? '')) {
        return `You have too many unfinished uploads. Finish or cancel one, then retry ${name}.`
      }
      return `You have reached your upload quota for the last 24 hours. You can upload ${name} ${formatWait(err.retryAfter)}.`
    case 503:
      return `The upload service is briefly unavailable; try again ${formatWait(err.retryAfter)}.`
    default:
      if (status >= 500) return `The server had a problem with ${name}. Retry in a moment.`
      return `${name} could not be uploaded: ${err?.detail ?? err?.message ?? 'unknown error'}.`
  }
}

/** A refusal from storage itself (the plugin's S3ServiceError), not from dropgate's API. */
export function isStorageError(err) {
  return typeof err?.status === 'number' && err !== null && 'serviceCode' in err
}

/** No answer at all: dropgate's API (ApiError status 0) or storage (the plugin's S3NetworkError). */
export function isNetworkError(err) {
  return err?.isNetwork === true || err?.code === 'NETWORK'
}
