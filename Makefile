# `make test` is the one command that runs every test (CI runs exactly this).
# `make lab` brings up a 3-node lab.

CARGO ?= cargo

.PHONY: test deps fmt-check clippy cargo-test crds lab lab-down bench

test: deps fmt-check clippy cargo-test

deps:
	bash scripts/install-test-deps.sh
	bash tests/control-plane/build.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

cargo-test:
	$(CARGO) test --workspace --locked

# Regenerate crds/*.yaml from the API types.
crds:
	$(CARGO) run -q -p tartan-crds -- write crds
	cp crds/*.yaml charts/tartan/crds/

lab: deps
	$(CARGO) build -q --release -p tartan-lab -p tartan-operator -p tartan-agent
	./target/release/tartan-lab up --nodes 3 --backend vxlan

lab-down:
	./target/release/tartan-lab down

bench: deps
	$(CARGO) build -q --release -p tartan-lab
	./target/release/tartan-lab bench --out bench/out
