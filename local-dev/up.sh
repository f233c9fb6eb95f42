#!/usr/bin/env bash
# The local stack: installs what is missing, then starts every component on 127.0.0.1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/local-dev/bootstrap.sh"
exec "$root/.venv/bin/dropgate-dev" up "$@"
