# node-local-coredns: a static binary on a small Debian runtime with the
# iptables tools in both modes (legacy and nft); the agent picks the mode
# that holds the host's rules, as kube-proxy does.
#
#   make image   (where Docker exists)

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /node-local-coredns ./cmd/node-local-coredns

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /node-local-coredns /node-local-coredns
# Root inside the container with only NET_ADMIN, NET_RAW and
# NET_BIND_SERVICE (see the DaemonSet): Kubernetes gives a non-root process
# no effective capabilities.
ENTRYPOINT ["/node-local-coredns"]
