#!/usr/bin/env bash
# Installs the official MCP Python SDK (PyPI `mcp`, in a venv under target/) for the tests of
# the MCP frontend: a client this project did not write. Safe to run again.
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
