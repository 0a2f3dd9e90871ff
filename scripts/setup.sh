#!/usr/bin/env bash
# Installs what building, running and testing Ash needs on Debian/Ubuntu, beyond the Rust
# toolchain: bubblewrap (the sandbox), e2fsprogs (workspace filesystems), a C compiler (bundled
# SQLite), Python with venv (for the API fuzzer), kubectl (to render deploy/), cargo-nextest,
# the rustfmt/clippy components and the wasm32-wasip2 target (plugins), the Claude Code CLI
# (scripts/install-claude.sh), moto's S3-compatible server for the snapshot-store tests
# (scripts/install-moto.sh), and Chromium with playwright-core for the browser tests
# (scripts/install-browser.sh).
# Safe to run again: it skips what is already there.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
# Workspace quotas: each workspace of a root server is an ext4 filesystem of its own.
command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v curl >/dev/null || missing+=(curl ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
# The escape and load tests run Python inside sandboxes, which see only the host's /usr.
[ -x /usr/bin/python3 ] || missing+=(python3)
# deploy/ is rendered with `kubectl kustomize` (scripts/check-deploy.sh), where Debian has it.
if ! command -v kubectl >/dev/null && apt-cache show kubernetes-client >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
  # Plugins are built to WebAssembly components.
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The `claude_code` backend drives the Claude Code CLI; its tests run the real one.
"$(dirname "$0")"/install-claude.sh
# The snapshot store's tests use an S3-compatible server on loopback.
"$(dirname "$0")"/install-moto.sh
# The browser tests drive Debian's Chromium with playwright-core.
"$(dirname "$0")"/install-browser.sh
# The MCP frontend's tests use the official MCP SDKs (Python, TypeScript) as their clients.
"$(dirname "$0")"/install-mcp-clients.sh

# bwrap must be able to create a user namespace; say so plainly if the host forbids it.
if ! bwrap --unshare-all --unshare-user --ro-bind / / -- true 2>/dev/null; then
  echo "setup: bwrap cannot create a sandbox here; enable unprivileged user namespaces" >&2
  echo "       (sysctl kernel.unprivileged_userns_clone=1) or run the server as root" >&2
  exit 1
fi
echo "setup: ready"
