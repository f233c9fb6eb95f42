// Each part's SHA-256, computed in the browser: presign signs it into the part's URL
// (x-amz-checksum-sha256), so storage refuses a part whose bytes changed on the way.
// crypto.subtle exists only in secure contexts: https pages, or http on 127.0.0.1/localhost.

export async function sha256Base64(blob) {
  if (!globalThis.crypto?.subtle) {
    throw new Error('this page is not a secure context (https), so it cannot compute checksums')
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()))
  let binary = ''
  for (const byte of digest) binary += String.fromCharCode(byte)
  return btoa(binary)
}
