// The reference page: sign in, drop files, watch them upload, get scanned and become downloadable.
// /config.json (served next to this bundle) says where presign and the dev sign-in are.

import './style.css'

import { DropgateApi } from './api.js'
import { Session } from './auth.js'
import { FileList } from './files.js'
import { createUploader } from './uploader.js'

const $ = (id) => document.getElementById(id)

async function loadConfig() {
  const response = await fetch('/config.json', { cache: 'no-store' })
  if (!response.ok) throw new Error(`/config.json answered ${response.status}`)
  return response.json()
}

class Notices {
  constructor(container) {
    this.container = container
    this.network = null
  }

  show({ kind, text }) {
    if (kind === 'network-ok') {
      this.network?.remove()
      this.network = null
      return
    }
    if (kind === 'network') {
      if (!this.network) {
        this.network = this.#element('network', text)
        this.container.append(this.network)
      }
      this.network.querySelector('span').textContent = text
      return
    }
    const element = this.#element(kind, text)
    this.container.append(element)
    setTimeout(() => element.remove(), kind === 'error' ? 20000 : 8000)
  }

  clear() {
    this.container.replaceChildren()
    this.network = null
  }

  #element(kind, text) {
    const element = document.createElement('div')
    element.className = `notice notice-${kind}`
    element.dataset.kind = kind
    const span = document.createElement('span')
    span.textContent = text
    element.append(span)
    return element
  }
}

async function main() {
  const notices = new Notices($('notices'))
  let config
  try {
    config = await loadConfig()
  } catch (err) {
    notices.show({ kind: 'error', text: `The page could not load its settings: ${err.message}` })
    return
  }

  // companion.html: the same page with @uppy/aws-s3 in Companion mode, presign under this origin.
  const companionEndpoint = document.body.dataset.mode === 'companion' ? config.companion_endpoint : undefined
  const session = new Session()
  let uploader = null
  let uploaderOwner = null
  let fileList = null

  const api = new DropgateApi(companionEndpoint ?? config.presign_url, () => session.token, {
    onUnauthorized: () => {
      if (!session.signedIn) return
      // Keep the uploads: pause them, and carry on once the person has signed in again.
      notices.show({ kind: 'error', text: 'Your sign-in has expired. Please sign in again; your uploads are paused.' })
      session.signOut()
      uploader?.pauseAll()
      fileList?.stop()
      $('session').hidden = true
      $('sign-in').hidden = false
    },
  })

  function localProgress() {
    const progress = new Map()
    for (const file of uploader?.getFiles() ?? []) {
      const id = uploader.dropgateUploadId(file)
      if (id && !file.progress.uploadComplete) progress.set(id, file.progress.percentage ?? 0)
    }
    return progress
  }

  function showSignedIn() {
    $('sign-in').hidden = true
    $('session').hidden = false
    $('session-user').textContent = session.user
    $('upload').hidden = false
    $('files').hidden = false
    if (uploader && uploaderOwner !== session.user) {
      // Someone else signed in after the token expired: the paused uploads are not theirs.
      uploader.destroy()
      uploader = null
    }
    if (uploader) {
      // The same person signed in again after the token expired.
      uploader.resumeAll()
      fileList.start()
      return
    }
    uploaderOwner = session.user
    if (companionEndpoint) session.setCookie(companionEndpoint)
    uploader = createUploader({
      api,
      target: $('dashboard'),
      limit: config.parallel_requests ?? 6,
      onNotice: (notice) => notices.show(notice),
      companionEndpoint,
    })
    uploader.on('upload-success', () => fileList.refresh())
    uploader.on('upload', () => setTimeout(() => fileList.refresh(), 500))
    fileList = new FileList({ api, container: $('file-list'), onNotice: (n) => notices.show(n), localProgress })
    fileList.start()
    // For debugging in the console (and the end-to-end tests): the Uppy instance.
    window.dropgateUploader = uploader
  }

  function signOut() {
    fileList?.stop()
    // Signing out cancels unfinished uploads (and forgets them in this browser); the token is
    // still there for the DELETEs Uppy sends as it closes.
    uploader?.destroy()
    uploader = null
    if (companionEndpoint) session.clearCookie(companionEndpoint)
    session.signOut()
    window.dropgateUploader = undefined
    $('session').hidden = true
    $('upload').hidden = true
    $('files').hidden = true
    $('sign-in').hidden = false
  }

  $('dev-sign-in').addEventListener('submit', async (event) => {
    event.preventDefault()
    const roles = $('dev-admin').checked ? ['uploader', 'admin'] : ['uploader']
    try {
      await session.devSignIn(config.dev_token_url, $('dev-user').value.trim(), roles)
      notices.clear()
      showSignedIn()
    } catch (err) {
      notices.show({ kind: 'error', text: err.message })
    }
  })
  $('token-sign-in').addEventListener('submit', (event) => {
    event.preventDefault()
    try {
      session.useToken($('token').value)
      notices.clear()
      showSignedIn()
    } catch (err) {
      notices.show({ kind: 'error', text: err.message })
    }
  })
  $('sign-out').addEventListener('click', signOut)
  if (!config.dev_token_url) $('dev-sign-in').hidden = true

  if (session.signedIn) showSignedIn()
  else signOut()
}

main()
