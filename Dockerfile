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
# A non-root user (the DaemonSet says so too). The binary carries its
# capabilities as file capabilities (image/build.sh sets them), so that the
# container's capabilities.add reach it although it does not run as root.
USER 65532:65532
ENTRYPOINT ["/node-local-coredns"]
