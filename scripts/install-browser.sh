#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium (/usr/bin/chromium), Node.js, and
# playwright-core, pinned by host/cli/tests/browser/package-lock.json, from the npm registry
# into that folder's node_modules (Playwright's own browser download is never used). Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-browser: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

dir=host/cli/tests/browser
if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
  echo "install-browser: installing playwright-core into $dir"
  npm ci --prefix "$dir" --no-audit --no-fund --silent
fi
