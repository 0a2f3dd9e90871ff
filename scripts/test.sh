#!/usr/bin/env bash
# The project's test command: lint, then every test in the workspace (unit, store,
# and end-to-end tests that start the real `ash` binary with real bwrap sandboxes).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
