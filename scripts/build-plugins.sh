#!/usr/bin/env bash
# Builds every plugin in plugins/ to a wasm32-wasip2 component and packages it, with its
# plugin.toml and the component's SHA-256, in target/plugins/<name>/ — the folder an
# operator's [[plugins]] entry (or `ash plugin check`) points at.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "build-plugins: adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi
CARGO_TARGET_DIR="$PWD/target" cargo build --manifest-path plugins/Cargo.toml \
    --release --target wasm32-wasip2 --locked

for manifest in plugins/*/plugin.toml; do
    dir=$(dirname "$manifest")
    name=$(basename "$dir")
    component=$(sed -n 's/^component = "\(.*\)"$/\1/p' "$manifest")
    out="target/plugins/$name"
    mkdir -p "$out"
    cp "target/wasm32-wasip2/release/$component" "$out/$component"
    sha=$(sha256sum "$out/$component" | cut -d' ' -f1)
    sed "s/^component = .*/&\nsha256 = \"$sha\"/" "$manifest" > "$out/plugin.toml"
    echo "build-plugins: $out ($sha)"
done
