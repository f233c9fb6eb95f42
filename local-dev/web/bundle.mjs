// The one way both pages are built (local-dev/web and local-dev/web-uppy5): esbuild bundles the entry
// scripts into dist/ with the pages next to them, built aside and swapped in, so a running web server
// never serves half a build.
import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import * as esbuild from 'esbuild'

/**
 * @param {string} root the npm project's folder
 * @param {string[]} entries scripts under src/ to bundle
 * @param {Record<string, string>} pages file name in dist/ → its HTML
 * @param {object} [options] more esbuild options
 */
export async function bundle(root, entries, pages, options = {}) {
  const dist = join(root, 'dist')
  const next = join(root, 'dist.next')
  await rm(next, { recursive: true, force: true })
  await mkdir(next, { recursive: true })
  await esbuild.build({
    entryPoints: entries.map((entry) => join(root, 'src', entry)),
    bundle: true,
    format: 'esm',
    target: ['es2022'],
    minify: true,
    legalComments: 'linked',
    outdir: next,
    logLevel: 'warning',
    ...options,
  })
  for (const [name, html] of Object.entries(pages)) await writeFile(join(next, name), html)
  await writeFile(join(next, '.built'), `${new Date().toISOString()}\n`)
  await rm(dist, { recursive: true, force: true })
  await rename(next, dist)
}
