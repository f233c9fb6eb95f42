// The tus peer of bench/peers/tus.py: @tus/server with @tus/s3-store, as their READMEs set them up
// (node_modules/@tus/server/README.md "Use", node_modules/@tus/s3-store/README.md "Use"), on 127.0.0.1,
// writing into the S3 storage (SeaweedFS) the local stack started. Settings come from the environment
// so the Python side owns every value; the store keeps its defaults (8 MiB preferred part size,
// 60 concurrent part uploads, in-memory cache and locker): what a deployment of the README gets.
import { S3Store } from '@tus/s3-store'
import { Server } from '@tus/server'

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is required`)
  return value
}

const store = new S3Store({
  s3ClientConfig: {
    bucket: env('TUS_S3_BUCKET'),
    region: env('TUS_S3_REGION'),
    endpoint: env('TUS_S3_ENDPOINT'),
    // SeaweedFS on 127.0.0.1 has no per-bucket host names: path-style addressing, as for MinIO.
    forcePathStyle: true,
    credentials: { accessKeyId: env('TUS_S3_ACCESS_KEY'), secretAccessKey: env('TUS_S3_SECRET_KEY') },
  },
})

const server = new Server({ path: '/files', datastore: store })
const host = env('TUS_HOST')
const port = Number(env('TUS_PORT'))
server.listen({ host, port }, () => console.log(`tus server on http://${host}:${port}/files`))
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
