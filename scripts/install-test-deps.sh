#!/usr/bin/env bash
# Installs what the tests need when it is missing; a no-op on a prepared machine.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip      || need_apt+=(iproute2)
have nft     || need_apt+=(nftables)
have ping    || need_apt+=(iputils-ping)
have arping  || need_apt+=(iputils-arping)  # forged ARP in the pod source check test
have iperf3  || need_apt+=(iperf3)
have ethtool || need_apt+=(ethtool)
have iptables || need_apt+=(iptables)        # the CNI portmap plugin
have nsenter || need_apt+=(util-linux)      # nft inside a node namespace
have bridge  || need_apt+=(iproute2)
have promtool || need_apt+=(prometheus)     # promtool check metrics
have bird     || need_apt+=(bird2)          # the bgp backend's BGP daemon
have curl     || need_apt+=(curl)           # queries to Prometheus's HTTP API
have buildah  || need_apt+=(buildah)        # node and pod images
have mmdebstrap || need_apt+=(mmdebstrap)   # Debian root filesystems for images
have newuidmap || need_apt+=(uidmap)        # buildah's user namespaces
have pkg-config || need_apt+=(pkg-config)   # runc's cgo build finds libseccomp
have wg       || need_apt+=(wireguard-tools) # configures the stock WireGuard peer in the interop test
have tcpdump  || need_apt+=(tcpdump)        # captures the underlay in the no-plaintext test

[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need_apt+=(containernetworking-plugins)
[ -e /usr/include/seccomp.h ] || need_apt+=(libseccomp-dev)  # runc built with seccomp

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: not root; install these by hand: ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
