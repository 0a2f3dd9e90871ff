#!/usr/bin/env bash
# Checks deploy/ offline: renders the Kubernetes base with `kubectl kustomize` and validates
# every object against the Kubernetes API schemas (kubernetes-validate, from PyPI, in a venv
# under target/), and checks the systemd units with `systemd-analyze verify` where systemd is.
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATE_VERSION=1.37.0
K8S_VERSION=1.33.0
venv=target/kubernetes-validate-$VALIDATE_VERSION
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "check-deploy: installing kubernetes-validate $VALIDATE_VERSION"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$VALIDATE_VERSION"
fi

rendered=$(mktemp --suffix=.yaml)
trap 'rm -f "$rendered"' EXIT
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes/base 2>/dev/null > "$rendered"
  kinds="Deployment StatefulSet Service NetworkPolicy ConfigMap"
else
  echo "check-deploy: no kubectl here: validating the base's files as they are, unrendered" >&2
  for file in deploy/kubernetes/base/*.yaml; do
    [ "$(basename "$file")" = kustomization.yaml ] || { cat "$file"; echo ---; } >> "$rendered"
  done
  kinds="Deployment StatefulSet Service NetworkPolicy"
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$rendered"
for kind in $kinds; do
  grep -q "^kind: $kind$" "$rendered" || { echo "check-deploy: no $kind rendered" >&2; exit 1; }
done

if command -v systemd-analyze >/dev/null; then
  # verify wants the binary the units start; a stand-in at a temporary path takes its place.
  units=$(mktemp -d)
  trap 'rm -f "$rendered"; rm -rf "$units"' EXIT
  printf '#!/bin/sh\n' > "$units/ash" && chmod +x "$units/ash"
  for unit in deploy/systemd/*.service; do
    sed "s|/usr/local/bin/ash|$units/ash|g" "$unit" > "$units/$(basename "$unit")"
  done
  # It only warns of an unknown key or a bad value: anything it says is a failure.
  said=$(systemd-analyze verify --man=no "$units"/*.service 2>&1)
  if [ -n "$said" ]; then
    echo "$said" >&2
    exit 1
  fi
fi
echo "check-deploy: ok"
