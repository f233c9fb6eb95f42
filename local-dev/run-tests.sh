#!/usr/bin/env bash
# The test suite: installs what is missing, then runs pytest against real servers
# (SeaweedFS, PostgreSQL, clamd) that the fixtures start on free loopback ports.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/local-dev/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
