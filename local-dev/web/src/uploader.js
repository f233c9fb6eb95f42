// The uploader: Uppy's Dashboard, @uppy/aws-s3 in multipart mode with its custom hooks
// calling dropgate's own API, and Golden Retriever for resuming after a reload.
//
// How a file travels (docs/uploader.md has the why):
//   1. a pre-processor creates the upload (POST /uploads) before the plugin cuts the file,
//      so the plugin's chunks are exactly presign's `part_size` (each part URL is bound to its length);
//   2. createMultipartUpload hands that upload to the plugin (its `uploadId` is dropgate's upload id);
//   3. signPart hashes the part (SHA-256, crypto.subtle) and asks POST /uploads/{id}/parts for its URL;
//      the plugin PUTs the parts straight to storage, `limit` requests at a time;
//   4. completeMultipartUpload: POST /uploads/{id}/complete; abortMultipartUpload: DELETE /uploads/{id};
//   5. listParts (GET /uploads/{id}) tells a resumed upload which parts storage already holds.

import AwsS3 from '@uppy/aws-s3'
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import GoldenRetriever from '@uppy/golden-retriever'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

import { ApiError } from './api.js'
import { sha256Base64 } from './checksum.js'
import { describeError } from './messages.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
/** presign's default part size; used only if an upload's own part size is unknown (see getChunkSize). */
const FALLBACK_PART_SIZE = 8 * MiB

/**
 * @param {object} options
 * @param {import('./api.js').DropgateApi} options.api
 * @param {HTMLElement} options.target where the Dashboard goes
 * @param {(notice: {kind: string, text: string, file?: object}) => void} options.onNotice
 * @param {number} [options.limit] parallel requests (part PUTs and API calls) across all files
 * @param {number} [options.maxFileSize] shown up front; presign enforces its own limit (413)
 */
export function createUploader({ api, target, onNotice, limit = 6, maxFileSize = GiB }) {
  /** Uppy file id → the upload POST /uploads created, until the plugin takes it over. */
  const reserved = new Map()
  /** File blob → presign's part size for it: the plugin's getChunkSize only sees the blob. */
  const partSizes = new WeakMap()
  // The SHA-256 each part was signed with, by upload id and part number: named again at completion for
  // storage that needs them there (DROPGATE_S3_PART_CHECKSUMS=required; storage checks them).
  const partChecksums = new Map()

  const uppy = new Uppy({
    id: 'dropgate',
    autoProceed: false,
    restrictions: { maxFileSize, minFileSize: 1 },
  })

  uppy.use(Dashboard, {
    inline: true,
    target,
    width: '100%',
    height: 380,
    showProgressDetails: true,
    proudlyDisplayPoweredByUppy: false,
    hideProgressAfterFinish: false,
    note: `Up to ${Math.round(maxFileSize / GiB)} GB per file. Files go straight to storage, in parts, each checked with SHA-256.`,
  })

  // Registered before Golden Retriever restores (it emits `restored` once its stores are read).
  uppy.on('restored', () => {
    prepareRestoredFiles().catch((err) => onNotice({ kind: 'error', text: describeError(err) }))
  })

  uppy.use(GoldenRetriever, {
    // Keep the file itself (not just its name) in IndexedDB, so a reload can finish it.
    indexedDB: { maxFileSize: maxFileSize, maxTotalSize: 4 * maxFileSize },
  })

  uppy.use(AwsS3, {
    shouldUseMultipart: () => true, // always dropgate's multipart API, even for one small part
    limit,
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
    getChunkSize: (data) => partSizes.get(data) ?? FALLBACK_PART_SIZE,

    async createMultipartUpload(file) {
      let upload = reserved.get(file.id)
      reserved.delete(file.id)
      if (!upload) {
        // Not reserved by the pre-processor (it runs for every upload, so this is a safety net):
        // create now, and refuse if presign chose another part size than the chunks were cut with.
        upload = await api.createUpload(newUploadOf(file))
        const cut = partSizes.get(file.data) ?? FALLBACK_PART_SIZE
        if (upload.part_size !== cut && file.size > 5 * MiB) {
          await api.abortUpload(upload.id).catch(() => {})
          throw new Error(`part size ${upload.part_size} differs from the ${cut} the file was cut into; retry`)
        }
      }
      return { uploadId: upload.id, key: upload.key }
    },

    async signPart(file, { uploadId, partNumber, body, signal }) {
      const sha256 = await sha256Base64(body)
      const [signed] = await api.signParts(uploadId, [{ number: partNumber, sha256 }], signal)
      if (!partChecksums.has(uploadId)) partChecksums.set(uploadId, new Map())
      partChecksums.get(uploadId).set(partNumber, sha256)
      // Content-Length is signed too, but browsers set it themselves (and refuse to be told).
      const headers = Object.fromEntries(
        Object.entries(signed.headers).filter(([name]) => name.toLowerCase() !== 'content-length'),
      )
      return { method: 'PUT', url: signed.url, headers }
    },

    async listParts(file, { uploadId, signal }) {
      const upload = await api.getUpload(uploadId, signal)
      if (upload.status !== 'pending') {
        throw new ApiError({ status: 409, error: 'conflict', detail: `the upload is ${upload.status}` })
      }
      return upload.parts.map((part) => ({ PartNumber: part.number, ETag: part.etag, Size: part.size }))
    },

    async completeMultipartUpload(file, { uploadId, parts, signal }) {
      const known = partChecksums.get(uploadId) ?? new Map()
      const upload = await api.completeUpload(
        uploadId,
        parts.map((part) => {
          const sha256 = known.get(part.PartNumber)
          return { number: part.PartNumber, etag: part.ETag, ...(sha256 ? { sha256 } : {}) }
        }),
        signal,
      )
      partChecksums.delete(uploadId)
      return { location: `${api.baseUrl}/uploads/${upload.id}`, dropgateId: upload.id, status: upload.status }
    },

    async abortMultipartUpload(file, { uploadId }) {
      try {
        await api.abortUpload(uploadId)
      } catch (err) {
        if (!(err instanceof ApiError && [404, 409].includes(err.status))) throw err
      }
    },

    // The plugin's own PUT, watched so the page can say "network lost, retrying" while it retries.
    async uploadPartBytes(options) {
      try {
        const result = await AwsS3.uploadPartBytes(options)
        onNotice({ kind: 'network-ok', text: '' })
        return result
      } catch (err) {
        if (err?.name !== 'AbortError' && (err?.source?.status ?? 0) === 0) {
          onNotice({ kind: 'network', text: 'The connection to storage was lost. Retrying…' })
        }
        throw err
      }
    },
  })

  function newUploadOf(file) {
    return { filename: file.name, size: file.size, contentType: file.type || 'application/octet-stream' }
  }

  // 1. Create each upload before the plugin splits the file, so the split follows presign's part size.
  uppy.addPreProcessor(async (fileIDs) => {
    await Promise.all(
      fileIDs.map(async (id) => {
        const file = uppy.getFile(id)
        if (!file || file.error || file.progress.uploadComplete) return
        if (file.s3Multipart?.uploadId || reserved.has(id)) return // started before, or reserved
        try {
          const upload = await api.createUpload(newUploadOf(file))
          reserved.set(id, upload)
          partSizes.set(file.data, upload.part_size)
        } catch (err) {
          uppy.emit('upload-error', file, err)
        }
      }),
    )
  })

  // After a reload: look up each restored upload, then resume the ones that were running.
  async function prepareRestoredFiles() {
    let started = false
    for (const file of uppy.getFiles()) {
      if (file.progress.uploadComplete) continue
      if (file.isGhost) {
        onNotice({ kind: 'error', text: `Add “${file.name}” again to finish its upload (the browser did not keep a copy).` })
        continue
      }
      started ||= Boolean(file.progress.uploadStarted)
      const uploadId = file.s3Multipart?.uploadId
      if (!uploadId) continue // never created: the pre-processor will
      let upload = null
      try {
        upload = await api.getUpload(uploadId)
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) throw err
      }
      if (upload?.status === 'pending') {
        partSizes.set(file.data, upload.part_size)
      } else if (upload?.completed_at) {
        // Completed just before the reload: nothing left to send.
        uppy.setFileState(file.id, {
          progress: { ...file.progress, uploadComplete: true, percentage: 100, bytesUploaded: file.size },
        })
      } else {
        // Gone (cancelled, expired, another user's): start it over as a new upload.
        const fresh = await api.createUpload(newUploadOf(file))
        uppy.setFileState(file.id, { s3Multipart: undefined })
        reserved.set(file.id, fresh)
        partSizes.set(file.data, fresh.part_size)
      }
    }
    if (started) {
      onNotice({ kind: 'info', text: 'Resuming your uploads from before the reload; finished parts are not sent again.' })
      uppy.emit('restore-confirmed')
    }
  }

  uppy.on('upload-error', (file, err) => {
    if (!file) return
    const text = describeError(err, { filename: file.name })
    uppy.setFileState(file.id, { error: text })
    onNotice({ kind: 'error', text, file })
  })

  uppy.on('is-offline', () => onNotice({ kind: 'network', text: 'You are offline. Uploads continue when the connection is back.' }))
  uppy.on('is-online', () => onNotice({ kind: 'network-ok', text: '' }))

  uppy.on('file-removed', (file) => {
    // Reserved but not yet handed to the plugin: nobody else would cancel it.
    const upload = reserved.get(file.id)
    reserved.delete(file.id)
    if (upload) api.abortUpload(upload.id).catch(() => {})
  })

  return uppy
}
