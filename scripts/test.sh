#!/usr/bin/env bash
# The project's test command: lint, fuzz the HTTP API from its OpenAPI document, check deploy/
# (scripts/check-deploy.sh), then every test in the workspace (unit, property, store, and
# end-to-end tests that start the real `ash` binary with real bwrap sandboxes).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build-plugins.sh
cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
for example in examples/plugins/*/Cargo.toml; do
    cargo fmt --manifest-path "$example" -- --check
done
cargo clippy --workspace --all-targets --locked -- -D warnings
CARGO_TARGET_DIR="$PWD/target" cargo clippy --manifest-path plugins/Cargo.toml \
    --target wasm32-wasip2 --release --locked -- -D warnings
./scripts/fuzz-api.sh
./scripts/check-deploy.sh
cargo nextest run --workspace --locked --no-fail-fast
