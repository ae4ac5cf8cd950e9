# One image for both binaries. The runtime is Debian slim rather than
# distroless because the agent drives `nft` (nftables' JSON API) and the image
# carries the CNI reference plugins its init container installs on nodes.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tartan-operator -p tartan-agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables containernetworking-plugins bird2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tartan-operator /src/target/release/tartan-agent /usr/local/bin/
# The operator runs as 65532 (the chart says so); the agent needs root with
# NET_ADMIN and NET_RAW (and NET_BIND_SERVICE for BIRD's port 179, bgp backend).
ENTRYPOINT ["/usr/local/bin/tartan-agent"]
