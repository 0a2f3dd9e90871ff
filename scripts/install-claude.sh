#!/usr/bin/env bash
# Installs the Claude Code CLI that the `claude_code` backend drives, as the native binary npm
# would install, pinned and checked: the sandbox sees /usr read-only, so /usr/local/bin/claude
# is on every sandbox's PATH. Needs no Node.js. Safe to run again: it skips a matching binary.
set -euo pipefail

version=2.1.330
target=${CLAUDE_INSTALL_PATH:-/usr/local/bin/claude}
case "$(uname -m)" in
  x86_64) package=claude-code-linux-x64
          sha512=f469fe57b0ed27c3359f3b4ff42783565f60dd1b6b7a923bace153c8f4519d97bc0facde6c81ca982ecebc16aeb9cb803f45f493ce520cdfcb3d56728ec19ecd ;;
  *) echo "install-claude: no pinned build for $(uname -m); install @anthropic-ai/claude-code $version with npm" >&2
     exit 1 ;;
esac

if [ -x "$target" ] && "$target" --version 2>/dev/null | grep -q "^$version "; then
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-claude: downloading @anthropic-ai/$package $version"
curl -fsSL --retry 3 -o "$work/package.tgz" \
  "https://registry.npmjs.org/@anthropic-ai/$package/-/$package-$version.tgz"
echo "$sha512  $work/package.tgz" | sha512sum --check --quiet
tar -xzf "$work/package.tgz" -C "$work" package/claude
as_root install -D -m 0755 "$work/package/claude" "$target"
"$target" --version
