// The uploader: Uppy 6's Dashboard, @uppy/aws-s3 in its signRequest mode with every S3 request
// signed by dropgate (POST /s3/sign), and Golden Retriever for resuming after a reload.
//
// How a file travels (docs/uploader.md has the why and what each step guarantees):
//   1. the plugin asks to sign a PutObject (files up to 100 MiB, its default) or a
//      CreateMultipartUpload; the page adds the file's size and name, and presign registers the
//      upload (limits, type, quota) before answering with a URL for its own key;
//   2. the plugin sends the file (or each 5 MiB part, one after another) straight to storage, every
//      URL bound to the exact length of what it carries;
//   3. ListParts (resume), CompleteMultipartUpload and AbortMultipartUpload are signed only for the
//      signed-in person's own upload; storage's notification then starts the virus scan.

import AwsS3 from '@uppy/aws-s3'
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import GoldenRetriever from '@uppy/golden-retriever'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

import { describeError, isNetworkError } from './messages.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

/**
 * @param {object} options
 * @param {import('./api.js').DropgateApi} options.api
 * @param {HTMLElement} options.target where the Dashboard goes
 * @param {(notice: {kind: string, text: string, file?: object}) => void} options.onNotice
 * @param {number} [options.limit] files uploading at once (the plugin sends one file's parts in order)
 * @param {number} [options.maxFileSize] shown up front; presign enforces its own limit (413)
 * @param {string} [options.companionEndpoint] Companion mode instead: presign's path on this page's origin
 *   (the token goes as the `dropgate_token` cookie, since the plugin sends no header of its own)
 */
export function createUploader({ api, target, onNotice, limit = 6, maxFileSize = GiB, companionEndpoint }) {
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
    note: `Up to ${Math.round(maxFileSize / GiB)} GB per file. Files go straight to storage, each byte count checked.`,
  })

  // Registered before Golden Retriever restores (it emits `restored` once its stores are read).
  uppy.on('restored', () => resumeRestoredFiles())

  uppy.use(GoldenRetriever, {
    // Keep the file itself (not just its name) in IndexedDB, so a reload can finish it.
    indexedDB: { maxFileSize, maxTotalSize: 4 * maxFileSize },
  })

  if (companionEndpoint) {
    // ---- Companion mode (docs/uploader.md): presign served under this page's origin ----
    uppy.use(AwsS3, { limit, companionEndpoint })
    // The plugin does not send the file's size, and dropgate signs the exact size into every URL;
    // `ref` lets a retry of the file get the same upload back.
    uppy.on('file-added', (file) => uppy.setFileMeta(file.id, { size: file.size, ref: file.id }))
    // ---- end ----
  } else {
    // ---- the part to copy: Uppy 6, unmodified, in signRequest mode ----
    uppy.use(AwsS3, {
      limit,
      // The file's handle for the signer (dropgate picks the object's key; the plugin takes it).
      generateObjectKey: (file) => file.id,
      // PutObject and CreateMultipartUpload carry the handle: add the file's size and name to those.
      signRequest: (request) => sign(request, uppy.getFile(request.key)),
    })
    // ---- end of the part to copy ----
  }

  /** Uppy file id → dropgate's upload id, for "Your files" to show this browser's progress. */
  const uploadIds = new Map()
  async function sign(request, file) {
    const signed = await api.signS3Request(request, file)
    if (file && signed.key) uploadIds.set(file.id, signed.key.split('/').pop())
    return signed
  }
  // Companion mode's uploadId is dropgate's upload id; signRequest mode's is storage's, so the key says it.
  uppy.dropgateUploadId = (file) =>
    uploadIds.get(file.id) ?? file.s3Multipart?.key?.split('/').pop() ?? file.response?.body?.key?.split('/').pop()

  // After a reload: carry on with the uploads that were running; the plugin asks storage (ListParts,
  // signed by dropgate) which parts it holds and sends only the others.
  function resumeRestoredFiles() {
    let started = false
    for (const file of uppy.getFiles()) {
      if (file.progress.uploadComplete) continue
      if (file.isGhost) {
        onNotice({ kind: 'error', text: `Add “${file.name}” again to finish its upload (the browser did not keep a copy).` })
        continue
      }
      started ||= Boolean(file.progress.uploadStarted)
    }
    if (started) {
      onNotice({ kind: 'info', text: 'Resuming your uploads from before the reload; finished parts are not sent again.' })
      uppy.emit('restore-confirmed')
    }
  }

  uppy.on('upload-error', (file, err) => {
    if (!file) return
    if (isNetworkError(err) && !navigator.onLine) return // said by `is-offline`; retried by `back-online`
    const text = describeError(err, { filename: file.name })
    uppy.setFileState(file.id, { error: text })
    onNotice({ kind: 'error', text, file })
  })

  // The plugin waits for the browser to be online before each request, but a request the drop cut
  // short fails the file: retry it when the connection is back (a multipart upload resumes where it
  // stopped, after ListParts; a single PutObject is signed again for the same upload).
  uppy.on('is-offline', () => onNotice({ kind: 'network', text: 'The connection to storage was lost. Retrying when it is back…' }))
  uppy.on('back-online', () => {
    onNotice({ kind: 'network-ok', text: '' })
    uppy.retryAll()
  })

  return uppy
}
