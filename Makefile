# `make test` is the one command that runs every test (CI runs exactly this).
# `make lab` brings up a 3-node lab. Both run as root (namespaces, netlink).

CARGO ?= cargo

.PHONY: test root deps control-plane wireguard-go fmt-check clippy cargo-test crds lab lab-cluster lab-down bench bench-scale

test: root deps control-plane wireguard-go fmt-check clippy cargo-test

root:
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "make: run this as root (the tests and the lab create network namespaces and program netlink)" >&2; \
	  exit 1; \
	fi

# What the tests and the lab need from Debian (a no-op when it is there).
deps:
	bash scripts/install-test-deps.sh

# The Kubernetes control plane for the end-to-end tests and `tartan-lab up --control-plane`.
control-plane:
	bash tests/control-plane/build.sh

# wireguard-go, the stock WireGuard peer of the wireguard backend's interop test.
wireguard-go:
	bash tests/wireguard-go/build.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Kernel, lab and end-to-end tests are #[ignore]d with their reason, so a
# plain `cargo test` reports them as ignored; here their needs are installed
# and they run.
cargo-test:
	$(CARGO) test --workspace --locked --no-fail-fast -- --include-ignored

# Regenerate crds/*.yaml from the API types.
crds:
	$(CARGO) run -q -p tartan-crds -- write crds
	cp crds/*.yaml charts/tartan/crds/

lab: root deps
	$(CARGO) build -q --release -p tartan-lab -p tartan-operator -p tartan-agent
	./target/release/tartan-lab up --nodes 3 --backend vxlan

# A real cluster: kubelet + containerd nodes, Tartan by helm (`tartan-lab cluster up`).
lab-cluster: root deps control-plane
	$(CARGO) build -q --release -p tartan-lab -p tartan-operator -p tartan-agent
	$(CARGO) build -q --release -p tartan-testbed --bin tartan-echo
	./target/release/tartan-lab cluster up --nodes 2

lab-down: root
	./target/release/tartan-lab down

bench: root deps
	$(CARGO) build -q --release -p tartan-lab
	./target/release/tartan-lab bench --out bench/out

# Tartan at N nodes on the real API server (fake nodes, two real agents).
N ?= 1000
bench-scale: root deps control-plane
	$(CARGO) build -q --release -p tartan-lab -p tartan-operator -p tartan-agent
	./target/release/tartan-lab bench --scale $(N) --out bench/out
