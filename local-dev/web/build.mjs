// Bundles the page into dist/: main.js (Uppy and the page, minified), main.css, index.html.
// Run by local-dev/bootstrap.sh after `npm ci`; `npm run build` by hand after editing src/.
import { copyFile, mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const root = dirname(fileURLToPath(import.meta.url))
const dist = join(root, 'dist')
// Built aside, then swapped in, so a running web server never serves half a build.
const next = join(root, 'dist.next')

await rm(next, { recursive: true, force: true })
await mkdir(next, { recursive: true })
await esbuild.build({
  entryPoints: [join(root, 'src', 'main.js')],
  bundle: true,
  format: 'esm',
  target: ['es2022'],
  minify: true,
  sourcemap: true,
  legalComments: 'linked',
  outdir: next,
  logLevel: 'warning',
})
await copyFile(join(root, 'src', 'index.html'), join(next, 'index.html'))
await writeFile(join(next, '.built'), `${new Date().toISOString()}\n`)
await rm(dist, { recursive: true, force: true })
await rename(next, dist)
