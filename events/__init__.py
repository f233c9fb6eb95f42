"""CloudEvent types dropgate consumes and emits, and the storage-notification adapters."""
