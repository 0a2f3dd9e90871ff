#!/usr/bin/env bash
# Vendors Swagger UI (the API explorer served at /docs) from the npm registry into
# host/server/assets/swagger-ui/: the pinned version's tarball is checked against its npm
# integrity digest, and only the bundle, its stylesheet and the licence are kept (without the
# source-map reference). The files are committed, so building and running Ash needs no
# network; run this only to move to another version (then update VERSION and INTEGRITY).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=5.35.0
INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
out=host/server/assets/swagger-ui
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

curl -fsSL -o "$work/package.tgz" "https://registry.npmjs.org/swagger-ui-dist/-/swagger-ui-dist-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$work/package.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
  echo "vendor-swagger-ui: swagger-ui-dist $VERSION does not match its integrity digest" >&2
  exit 1
fi
tar -xzf "$work/package.tgz" -C "$work"
mkdir -p "$out"
grep -v '^//# sourceMappingURL=' "$work/package/swagger-ui-bundle.js" > "$out/swagger-ui-bundle.js"
grep -v 'sourceMappingURL=' "$work/package/swagger-ui.css" > "$out/swagger-ui.css"
cp "$work/package/LICENSE" "$work/package/NOTICE" "$out/"
echo "swagger-ui-dist $VERSION ($INTEGRITY)" > "$out/VERSION"
echo "vendor-swagger-ui: swagger-ui-dist $VERSION in $out"
