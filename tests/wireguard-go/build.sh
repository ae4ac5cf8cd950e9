#!/usr/bin/env bash
# Builds wireguard-go (the stock userspace WireGuard, pinned in go.mod) into
# target/wireguard-go/ for the wireguard backend's interoperability test.
# A per-machine cache keyed by the pinned version makes a fresh clone copy only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(awk '$1 == "require" && $2 == "golang.zx2c4.com/wireguard" { print $3 }' "$here/go.mod")
out="$root/target/wireguard-go"
cache="$HOME/.cache/tartan/wireguard-go-$version"
if [ -x "$out/wireguard-go" ] && [ "$(cat "$out/.version" 2>/dev/null)" = "$version" ]; then
  echo "wireguard-go $version is in $out"
  exit 0
fi
mkdir -p "$out" "$cache"
if [ ! -x "$cache/wireguard-go" ]; then
  echo "building wireguard-go $version"
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$cache/wireguard-go" golang.zx2c4.com/wireguard)
fi
cp "$cache/wireguard-go" "$out/wireguard-go"
echo "$version" > "$out/.version"
echo "wireguard-go $version is in $out"
