"""The local stack (installed as `dropgate_local`): real SeaweedFS, PostgreSQL and clamd on
loopback, every function as its own functions-framework process, and the dev tools."""
