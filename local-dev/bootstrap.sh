#!/usr/bin/env bash
# Installs what the local stack and the tests need on a Debian machine, then the
# project into .venv. Idempotent: a second run only checks and returns.
#   - Debian packages: clamav-daemon (clamd), clamav-testfiles (real test samples)
#   - Python >= 3.11 with venv; the project with its test extra, and local-dev/ (dropgate-dev), from PyPI
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

apt_packages=(clamav-daemon clamav clamav-testfiles ca-certificates)
# zip: the verdict-safety tests build a password-protected archive with the real tool.
apt_packages+=(zip)
# prometheus: promtool checks and unit-tests the shipped alert rules, and the server itself scrapes a test
# stack (tests/test_monitoring.py, on ports of their own; the package's system service is not used).
apt_packages+=(prometheus)
# The uploader page (local-dev/web) is bundled with Node.js; its end-to-end tests drive Debian's Chromium.
apt_packages+=(chromium fonts-liberation)
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
if [ -z "$python" ]; then
  missing+=(python3 python3-venv python3-pip); python=python3
elif ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Only reinstall the project when its dependency list changed.
stamp=".venv/.dropgate-installed"
wanted="$(cat pyproject.toml local-dev/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "bootstrap: installing the project into .venv"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -qq --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[test]'
  # The local stack, dev auth and operator CLI: a project of its own, never in the product image.
  .venv/bin/python -m pip install -qq --disable-pip-version-check -e ./local-dev
  echo "$wanted" > "$stamp"
fi

# The uploader page (Uppy 6) and the Uppy 5 compatibility page: npm ci when a lockfile changed, the
# bundle when its sources changed.
for web in local-dev/web local-dev/web-uppy5; do
  web_stamp="$web/node_modules/.dropgate-installed"
  web_wanted="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$web_stamp" 2>/dev/null)" != "$web_wanted" ]; then
    echo "bootstrap: installing the npm packages of $web"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$web_wanted" > "$web_stamp"
    rm -f "$web/dist/.built"
  fi
  if [ ! -f "$web/dist/.built" ] || [ -n "$(find "$web/src" "$web/build.mjs" local-dev/web/bundle.mjs "$web_stamp" -newer "$web/dist/.built" -print -quit)" ]; then
    (cd "$web" && npm run --silent build)
  fi
done
