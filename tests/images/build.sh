#!/usr/bin/env bash
# Builds the container images a real node (kubelet + containerd) runs in
# Tartan's tests, with buildah and no registry, as docker-archive tarballs in
# target/images/ (for `ctr -n k8s.io images import`; containerd 2 unpacks an
# import only for the snapshotters in the transfer service's unpack_config, so
# a node on `native` lists it there):
#   localhost/tartan/tartan:<tag>   the repository's Dockerfile, built with
#                                   BUILDER_IMAGE/RUNTIME_IMAGE = the Debian base
#                                   below and PREBUILT = the release binaries
#                                   -> tartan-<tag>.tar
#   localhost/tartan/pause:<ver>    the control plane's static pause alone, the
#                                   pod sandbox -> pause.tar
#   localhost/tartan/echo:dev       tartan-echo on the Debian base, `tartan-echo
#                                   serve` -> echo.tar
# on a Debian bookworm minbase from mmdebstrap, localhost/tartan/debian:bookworm
# (its tarball cached in ~/.cache/tartan/images/).
#
# Takes the binaries as built: tartan-operator, tartan-agent and tartan-echo
# from ${CARGO_TARGET_DIR:-target}/release (`cargo build --release -p
# tartan-agent -p tartan-operator` and `-p tartan-testbed --bin tartan-echo`),
# pause from target/control-plane/ (tests/control-plane/build.sh). An archive
# is rebuilt only when what it is made of changed (a checksum beside it).
# Usage: tests/images/build.sh [TAG]   (TAG, or TARTAN_IMAGE_TAG, default dev)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-${TARTAN_IMAGE_TAG:-dev}}
# TARTAN_PREBUILT_DIR: take the binaries from there instead (the tests use
# the debug build they already made; debug info is stripped on the way in).
release=${TARTAN_PREBUILT_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$root/tests/control-plane/kube/go.mod")
pause_bin="$root/target/control-plane/$kube_version/pause"
out="$root/target/images"
cache="$HOME/.cache/tartan/images"
base=localhost/tartan/debian:bookworm
# The Debian base: mmdebstrap's minbase with what the official slim image has
# (bookworm, -updates and -security; no manuals, docs but copyrights, or
# translations, also for what is installed on it later; /usr merged by the
# hook, not by the usrmerge package and its perl) and its apt settings (no
# .deb kept after an install, no binary caches, no translations:
# docker-clean, docker-no-languages). The recipe's checksum names the cached
# tarball and labels the image, so changing it here makes a new base.
mmdebstrap_args=(
  --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  bookworm
)
mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
apt_clean='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'
apt_languages='Acquire::Languages "none";'
base_recipe=$(printf '%s\n' "${mmdebstrap_args[@]}" "${mirrors[@]}" | sha256sum | cut -c1-12)
base_tar="$cache/debian-bookworm-$base_recipe.tar"
image_recipe=$(printf '%s\n' "$base_recipe" "$apt_clean" "$apt_languages" | sha256sum | cut -c1-12)

for file in "$release/tartan-operator" "$release/tartan-agent" "$release/tartan-echo"; do
  if [ ! -x "$file" ]; then
    echo "images: $file is missing; build it first:" >&2
    echo "  cargo build --release -p tartan-operator -p tartan-agent && cargo build --release -p tartan-testbed --bin tartan-echo" >&2
    exit 1
  fi
done
if [ ! -x "$pause_bin" ]; then
  echo "images: $pause_bin is missing; build it first: tests/control-plane/build.sh" >&2
  exit 1
fi
for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "images: $tool is not installed (make deps)" >&2; exit 1; }
done
# The pause image is tagged with the version the binary reports (pause.c v3.10.2-v1.37.2).
pause_version=$("$pause_bin" -v 2>&1 | sed -n 's/^pause\.c v\([0-9][0-9.]*\)-.*/\1/p')
if [ -z "$pause_version" ]; then
  echo "images: $pause_bin -v does not say its version" >&2
  exit 1
fi
mkdir -p "$out" "$cache"
# One build at a time per machine: buildah's store and the tags are shared.
exec 9>"$cache/.lock"
flock 9

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
# A working container and a build context of this run, removed if the
# script stops half-way.
ctr=""
context=""
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  [ -z "$context" ] || rm -rf "$context"
}
trap cleanup EXIT
# Runs a step quietly, showing its output only when it fails.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "images: failed: $*" >&2
    exit 1
  fi
  rm -f "$log"
}
# What an image is made of: its files' checksums and the rest of its recipe
# (arguments), including this script.
inputs() {
  local file
  {
    for file in "$here/build.sh" "$@"; do
      [ -f "$file" ] || { echo "$file"; continue; }
      echo "$(sha256sum <"$file" | cut -d' ' -f1) $(basename "$file")"
    done
  } | sha256sum | cut -d' ' -f1
}
up_to_date() { [ -s "$1" ] && [ "$(cat "$1.sum" 2>/dev/null)" = "$2" ]; }
# Pushes an image to a docker-archive (written aside, then moved into place)
# and records its inputs, and drops the image the tag pointed at before.
archive() {
  local name=$1 tar=$2 sum=$3 old=$4
  rm -f "$tar.tmp"
  quiet buildah push "$name" "docker-archive:$tar.tmp:$name"
  mv -f "$tar.tmp" "$tar"
  echo "$sum" >"$tar.sum"
  local new
  new=$(image_id "$name")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    buildah rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "images: $name -> ${tar#"$root/"}"
}

if [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "tartan.recipe"}}' "$base" 2>/dev/null)" != "$image_recipe" ]; then
  if [ ! -s "$base_tar" ]; then
    echo "images: mmdebstrap bookworm minbase (first time: a minute or two)"
    quiet mmdebstrap "${mmdebstrap_args[@]}" "$cache/partial.tar" "${mirrors[@]}"
    mv -f "$cache/partial.tar" "$base_tar"
  fi
  echo "images: $base from ${base_tar/#"$HOME"/\~}"
  old=$(image_id "$base")
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" -xf "$base_tar"
  echo "$apt_clean" >"$mnt/etc/apt/apt.conf.d/docker-clean"
  echo "$apt_languages" >"$mnt/etc/apt/apt.conf.d/docker-no-languages"
  buildah umount "$ctr" >/dev/null
  # What debian:bookworm-slim's config says.
  buildah config --os linux --arch amd64 --label tartan.recipe="$image_recipe" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["bash"]' "$ctr"
  quiet buildah commit --rm "$ctr" "$base"
  ctr=""
  [ -z "$old" ] || buildah rmi "$old" >/dev/null 2>&1 || true
fi
base_id=$(image_id "$base")

# Tartan: the Dockerfile, on a context of just itself and the binaries (not
# the repository, whose target/ is gigabytes).
tartan=localhost/tartan/tartan:$tag
tartan_tar="$out/tartan-$tag.tar"
sum=$(inputs "$root/Dockerfile" "$release/tartan-operator" "$release/tartan-agent" "base $base_id")
if ! up_to_date "$tartan_tar" "$sum"; then
  echo "images: building $tartan from Dockerfile"
  context="$out/context-$tag"
  rm -rf "$context"
  mkdir -p "$context/prebuilt"
  cp "$root/Dockerfile" "$context/"
  for bin in tartan-operator tartan-agent; do
    objcopy --strip-debug "$release/$bin" "$context/prebuilt/$bin"
  done
  old=$(image_id "$tartan")
  # --layers keeps the apt-get layer across rebuilds; --pull=never: no registry.
  quiet buildah bud --isolation chroot --network host --layers --force-rm --pull=never \
    -f "$context/Dockerfile" \
    --build-arg BUILDER_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" \
    --build-arg PREBUILT=prebuilt \
    -t "$tartan" "$context"
  rm -rf "$context"
  context=""
  archive "$tartan" "$tartan_tar" "$sum" "$old"
  # --layers also keeps each build's build stage (base + binaries, twice),
  # which nothing uses again: drop the dangling images on the base (its label).
  # The apt-get layer is the tagged image's parent, so it stays.
  for id in $(buildah images -q --filter dangling=true --filter label=tartan.recipe); do
    buildah rmi "$id" >/dev/null 2>&1 || true
  done
fi

# pause: the static binary alone, as the sandbox image.
pause=localhost/tartan/pause:$pause_version
pause_tar="$out/pause.tar"
sum=$(inputs "$pause_bin" "$pause")
if ! up_to_date "$pause_tar" "$sum"; then
  old=$(image_id "$pause")
  ctr=$(buildah from scratch)
  buildah copy --chmod 0755 "$ctr" "$pause_bin" /pause >/dev/null
  buildah config --os linux --arch amd64 --entrypoint '["/pause"]' "$ctr"
  quiet buildah commit --rm "$ctr" "$pause"
  ctr=""
  archive "$pause" "$pause_tar" "$sum" "$old"
fi

# echo: the test workload on the Debian base.
echo_image=localhost/tartan/echo:dev
echo_tar="$out/echo.tar"
sum=$(inputs "$release/tartan-echo" "base $base_id")
if ! up_to_date "$echo_tar" "$sum"; then
  old=$(image_id "$echo_image")
  ctr=$(buildah from --pull=never "$base")
  objcopy --strip-debug "$release/tartan-echo" "$out/tartan-echo.stripped"
  buildah copy --chmod 0755 "$ctr" "$out/tartan-echo.stripped" /usr/local/bin/tartan-echo >/dev/null
  rm -f "$out/tartan-echo.stripped"
  # The base's CMD (bash) goes, or it would be the entrypoint's argument.
  buildah config --cmd '[]' "$ctr"
  buildah config --entrypoint '["/usr/local/bin/tartan-echo", "serve"]' "$ctr"
  quiet buildah commit --rm "$ctr" "$echo_image"
  ctr=""
  archive "$echo_image" "$echo_tar" "$sum" "$old"
fi

echo "images $tartan, $pause, $echo_image are in ${out#"$root/"}"
