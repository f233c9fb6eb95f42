// Bundles the Uppy 5 compatibility page into dist/ (served by the local stack's web server at /uppy5/),
// the same way as the reference page (../web/bundle.mjs). Run by local-dev/bootstrap.sh after `npm ci`.
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundle } from '../web/bundle.mjs'

const root = dirname(fileURLToPath(import.meta.url))
await bundle(root, ['page.js'], { 'index.html': await readFile(join(root, 'src', 'index.html'), 'utf8') })
