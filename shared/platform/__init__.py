"""Platform code that knows no domain: settings, database and migrations, the storage client (the one
storage-error mapping and the one "missing" check), the clamd client, the HTTP app and its error map,
auth (JWKS and the one bearer parser), logs, tracing, metrics, audit, event delivery (sink, retries,
tracing headers) and the function lifecycle.
"""
