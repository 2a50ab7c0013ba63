# node-local-coredns: the static binary on a minimal Debian with the
# iptables tools in both modes (legacy and nft); the agent picks the mode
# that holds the host's rules, as kube-proxy does.
#
#   make image   builds it with podman (image/build.sh): the base is made
#                locally by debootstrap, the context is the binary alone.
#
# Nothing runs at build time, so the build needs no network.
ARG BASE=localhost/node-local-coredns-base:bookworm
FROM ${BASE}
COPY node-local-coredns /node-local-coredns
# Root inside the container with only NET_ADMIN, NET_RAW and
# NET_BIND_SERVICE (see the DaemonSet): Kubernetes gives a non-root process
# no effective capabilities.
ENTRYPOINT ["/node-local-coredns"]
