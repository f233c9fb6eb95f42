// "Your files": GET /files?mine, polled while anything is still moving, with a download
// button once the scan said clean or an admin released the file (GET /files/{id}/download answers a
// short-lived URL). Which statuses are downloadable is presign's rule (shared/uploads/model.py DOWNLOADABLE).

import { describeError, formatBytes, STATUS_LABELS, statusExplanation } from './messages.js'

const DOWNLOADABLE = new Set(['clean', 'released'])

const MOVING = new Set(['pending', 'uploaded', 'scanning'])
const FAST_POLL_MS = 1500
const SLOW_POLL_MS = 10000

export class FileList {
  /**
   * @param {object} options
   * @param {import('./api.js').DropgateApi} options.api
   * @param {HTMLElement} options.container
   * @param {(notice: {kind: string, text: string}) => void} options.onNotice
   * @param {() => Map<string, number>} options.localProgress dropgate upload id → percent, from the uploader
   */
  constructor({ api, container, onNotice, localProgress }) {
    this.api = api
    this.container = container
    this.onNotice = onNotice
    this.localProgress = localProgress
    this.files = []
    this.timer = null
    this.stopped = false
    this.loadedOnce = false
  }

  start() {
    this.stopped = false
    this.refresh()
  }

  stop() {
    this.stopped = true
    clearTimeout(this.timer)
  }

  /** Poll now (after an upload finished, say) and then on the usual schedule. */
  async refresh() {
    clearTimeout(this.timer)
    if (this.stopped) return
    try {
      this.files = await this.api.listMyFiles()
      this.loadedOnce = true
      this.render()
    } catch (err) {
      this.onNotice({ kind: 'error', text: `Your files could not be listed: ${describeError(err)}` })
    }
    if (this.stopped) return
    const moving = this.files.some((file) => MOVING.has(file.status)) || this.localProgress().size > 0
    this.timer = setTimeout(() => this.refresh(), moving ? FAST_POLL_MS : SLOW_POLL_MS)
  }

  render() {
    const progress = this.localProgress()
    const rows = this.files.map((file) => this.#row(file, progress.get(file.id)))
    const table = document.createElement('table')
    table.className = 'files'
    table.innerHTML =
      '<thead><tr><th>File</th><th>Size</th><th>Status</th><th>Uploaded</th><th></th></tr></thead>'
    const body = document.createElement('tbody')
    if (rows.length === 0) {
      const empty = document.createElement('tr')
      empty.innerHTML = '<td colspan="5" class="empty">No files yet. Drop one above.</td>'
      body.append(empty)
    }
    body.append(...rows)
    table.append(body)
    this.container.replaceChildren(table)
  }

  #row(file, percent) {
    const row = document.createElement('tr')
    row.dataset.fileId = file.id
    row.dataset.filename = file.filename
    row.dataset.status = file.status

    const name = document.createElement('td')
    name.className = 'name'
    name.textContent = file.filename

    const size = document.createElement('td')
    size.textContent = formatBytes(file.size)

    const status = document.createElement('td')
    const badge = document.createElement('span')
    badge.className = `badge badge-${file.status}`
    badge.textContent =
      file.status === 'pending' && percent != null
        ? `${STATUS_LABELS.pending} ${Math.floor(percent)}%`
        : STATUS_LABELS[file.status] ?? file.status
    badge.title = statusExplanation(file)
    status.append(badge)
    const why = statusExplanation(file)
    if (why && !['clean', 'pending'].includes(file.status)) {
      const note = document.createElement('div')
      note.className = 'why'
      note.textContent = why
      status.append(note)
    }

    const when = document.createElement('td')
    when.textContent = new Date(file.completed_at ?? file.created_at).toLocaleString()

    const action = document.createElement('td')
    if (DOWNLOADABLE.has(file.status)) {
      const button = document.createElement('button')
      button.type = 'button'
      button.className = 'download'
      button.dataset.action = 'download'
      button.textContent = 'Download'
      button.addEventListener('click', () => this.download(file, button))
      action.append(button)
    }
    row.append(name, size, status, when, action)
    return row
  }

  async download(file, button) {
    button.disabled = true
    try {
      const { url } = await this.api.downloadUrl(file.id)
      // Storage answers with Content-Disposition: attachment, so this saves the file, not navigates.
      const link = document.createElement('a')
      link.href = url
      link.rel = 'noopener'
      document.body.append(link)
      link.click()
      link.remove()
    } catch (err) {
      this.onNotice({ kind: 'error', text: describeError(err, { filename: file.filename }) })
      this.refresh()
    } finally {
      button.disabled = false
    }
  }
}
