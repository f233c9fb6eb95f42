// Uppy 5 (@uppy/core 5, @uppy/aws-s3 5), unchanged, against dropgate's Companion routes: what a page
// built before Uppy 6 keeps doing. Uppy 5's Companion client can send a header, so presign may be on
// another origin, with the bearer token; the plugin's defaults pick a POST policy (/s3/params) for files
// of 100 MiB or less and multipart above.
import AwsS3 from '@uppy/aws-s3'
import Uppy from '@uppy/core'

/** What happened to each file, for the person (the list) and the end-to-end tests (window.uploads). */
const uploads = []
window.uploads = uploads

function show(entry) {
  uploads.push(entry)
  const item = document.createElement('li')
  item.dataset.name = entry.name
  item.dataset.outcome = entry.outcome
  item.textContent = `${entry.name}: ${entry.outcome}${entry.error ? ` (${entry.error})` : ''}`
  document.getElementById('results').append(item)
}

const config = await (await fetch('/config.json', { cache: 'no-store' })).json()
const token = new URLSearchParams(location.hash.slice(1)).get('token')

const uppy = new Uppy({ id: 'dropgate-uppy5' }).use(AwsS3, {
  endpoint: config.presign_url,
  headers: { authorization: `Bearer ${token}` },
})
uppy.on('upload-success', (file, response) => show({ name: file.name, outcome: 'success', key: response.body?.key }))
uppy.on('upload-error', (file, error) => show({ name: file.name, outcome: 'error', error: String(error?.message ?? error) }))

document.getElementById('files').addEventListener('change', async (event) => {
  for (const file of event.target.files) {
    // dropgate signs the exact size into every URL; Uppy's Companion client does not send it.
    uppy.addFile({ name: file.name, type: file.type, data: file, meta: { size: file.size } })
  }
  event.target.value = ''
  await uppy.upload()
})
window.uppyReady = true
