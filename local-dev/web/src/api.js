// dropgate's presign API as a browser calls it: JSON over fetch, `Authorization: Bearer <JWT>`.
// The routes and their answers are in functions/presign/openapi.json; errors are always {error, detail}.

import { describeError } from './messages.js'

/** An answer other than 2xx, or no answer at all (`status` 0: the network failed). */
export class ApiError extends Error {
  constructor({ status, error, detail, retryAfter = null }) {
    super(`${status} ${error}: ${detail}`)
    this.name = 'ApiError'
    this.status = status
    this.error = error
    this.detail = detail
    /** Seconds, from the Retry-After header of a 429 or 503. */
    this.retryAfter = retryAfter
    // Uppy shows an error's message to the person: make it a sentence, keep the code in `details`.
    this.details = this.message
    this.message = describeError(this)
  }

  get isNetwork() {
    return this.status === 0
  }
}

function parseRetryAfter(value) {
  if (!value) return null
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return seconds
  const date = Date.parse(value)
  return Number.isNaN(date) ? null : Math.max(0, Math.round((date - Date.now()) / 1000))
}

export class DropgateApi {
  /**
   * @param {string} baseUrl presign's URL, e.g. http://127.0.0.1:8781
   * @param {() => string | null} getToken the current access token
   * @param {{onUnauthorized?: (err: ApiError) => void}} [hooks]
   */
  constructor(baseUrl, getToken, hooks = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '')
    this.getToken = getToken
    this.onUnauthorized = hooks.onUnauthorized ?? (() => {})
  }

  async request(method, path, { body, signal } = {}) {
    const headers = { Accept: 'application/json' }
    const token = this.getToken()
    if (token) headers.Authorization = `Bearer ${token}`
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    let response
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        credentials: 'omit', // the bearer token is the credential; no cookies cross origins
      })
    } catch (err) {
      if (err?.name === 'AbortError') throw err
      throw new ApiError({ status: 0, error: 'network', detail: String(err?.message ?? err) })
    }
    const text = await response.text()
    let payload = null
    try {
      payload = text ? JSON.parse(text) : null
    } catch {
      payload = null
    }
    if (!response.ok) {
      const err = new ApiError({
        status: response.status,
        error: payload?.error ?? 'http_error',
        detail: payload?.detail ?? text.slice(0, 200),
        retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
      })
      if (response.status === 401) this.onUnauthorized(err)
      throw err
    }
    return payload
  }

  /**
   * POST /s3/sign: one S3 request of @uppy/aws-s3 6 (signRequest mode), signed for the caller's upload.
   * `file` is the Uppy file the request starts (PutObject, CreateMultipartUpload: the plugin's key is
   * the file id), whose size and name presign needs to register it; undefined for the other requests.
   * The answer, `{url, key?, headers?}`, is what the plugin sends to storage.
   */
  signS3Request(request, file, signal) {
    const body = file ? { ...request, size: file.size, filename: file.name, type: file.type } : request
    return this.request('POST', '/s3/sign', { body, signal })
  }

  async listMyFiles(signal) {
    const answer = await this.request('GET', '/files?mine', { signal })
    return answer.files
  }

  /** A 5-minute URL, only for files scanned clean (409 not yet, 403 infected, 410 gone). */
  downloadUrl(fileId, signal) {
    return this.request('GET', `/files/${encodeURIComponent(fileId)}/download`, { signal })
  }
}
