# `make test` is the one command that runs every test (CI runs exactly this).
# `make lab` brings up a 3-node lab.

CARGO ?= cargo

.PHONY: test deps fmt-check clippy cargo-test crds lab

test: deps fmt-check clippy cargo-test

deps:
	bash scripts/install-test-deps.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

cargo-test:
	$(CARGO) test --workspace --locked

# Regenerate crds/*.yaml from the API types.
crds:
	$(CARGO) run -q -p tartan-crds -- write crds

lab:
	$(CARGO) run -q -p tartan-lab -- up --nodes 3 --backend vxlan
