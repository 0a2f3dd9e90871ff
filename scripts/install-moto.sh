#!/usr/bin/env bash
# Installs moto's S3-compatible server (from PyPI, in a venv under target/) for the tests of the
# snapshot store. It is a stand-in for object storage that the tests start on loopback, never
# AWS. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.1.18
venv=target/moto-$MOTO_VERSION
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
  echo "install-moto: installing moto[s3,server] $MOTO_VERSION"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[s3,server]==$MOTO_VERSION"
fi
ln -sfn "moto-$MOTO_VERSION" target/moto
