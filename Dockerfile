# One image for both binaries. The runtime is Debian slim rather than
# distroless because the agent drives `nft` (nftables' JSON API) and the image
# carries the CNI reference plugins its init container installs on nodes.
#
# `docker build .` builds the binaries with cargo on the Rust image. The base
# images and the binaries are build arguments so the tests can build this same
# file where there is no registry to pull the Rust or Debian image from and
# the release binaries are already built (CI builds them once, for the tests
# too): tests/images/build.sh passes a local Debian image for both stages and
# PREBUILT=prebuilt, a directory of the build context holding tartan-operator
# and tartan-agent, which are then copied instead of compiled.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
ARG PREBUILT=""
WORKDIR /src
COPY . .
RUN if [ -n "$PREBUILT" ]; then \
      install -D -m 0755 -t target/release "$PREBUILT/tartan-operator" "$PREBUILT/tartan-agent"; \
    else \
      cargo build --release --locked -p tartan-operator -p tartan-agent; \
    fi

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables containernetworking-plugins bird2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tartan-operator /src/target/release/tartan-agent /usr/local/bin/
# The operator runs as 65532 (the chart says so); the agent needs root with
# NET_ADMIN and NET_RAW (and NET_BIND_SERVICE for BIRD's port 179, bgp backend).
ENTRYPOINT ["/usr/local/bin/tartan-agent"]
