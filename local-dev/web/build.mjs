// Bundles the page into dist/: main.js (Uppy and the page, minified), main.css, index.html, and
// companion.html (the same page with @uppy/aws-s3 in Companion mode: docs/uploader.md).
// Run by local-dev/bootstrap.sh after `npm ci`; `npm run build` by hand after editing src/.
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundle } from './bundle.mjs'

const root = dirname(fileURLToPath(import.meta.url))
const page = await readFile(join(root, 'src', 'index.html'), 'utf8')
const companion = page
  .replace('<body data-mode="sign-request">', '<body data-mode="companion">')
  .replace('<title>dropgate — upload files</title>', '<title>dropgate — upload files (Uppy Companion mode)</title>')
if (companion === page) throw new Error('index.html no longer has the marks companion.html is made from')
await bundle(root, ['main.js'], { 'index.html': page, 'companion.html': companion }, { sourcemap: true })
