#!/usr/bin/env bash
# Installs the official MCP SDKs for the tests of the MCP frontend, clients this project did
# not write: the Python SDK (PyPI `mcp`, in a venv under target/) and the TypeScript SDK (npm
# `@modelcontextprotocol/sdk`, pinned by host/cli/tests/mcp/package-lock.json, into that
# folder's node_modules; Node.js comes from scripts/install-browser.sh). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

MCP_VERSION=2.3.0
venv=target/mcp-python-$MCP_VERSION
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mcp.client.streamable_http' 2>/dev/null; then
  echo "install-mcp-clients: installing mcp $MCP_VERSION"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "mcp==$MCP_VERSION"
fi
ln -sfn "mcp-python-$MCP_VERSION" target/mcp-python

dir=host/cli/tests/mcp
if [ ! -f "$dir/node_modules/@modelcontextprotocol/sdk/package.json" ]; then
  echo "install-mcp-clients: installing @modelcontextprotocol/sdk into $dir"
  npm ci --prefix "$dir" --no-audit --no-fund --silent
fi
