#!/usr/bin/env bash
# image/build.sh builds the node-local-coredns container image with podman
# (no Docker engine, no registry) and writes it as an OCI archive.
#
#   image/build.sh BINARY IMAGE ARCHIVE
#
# It also builds IMAGE-nftables, the binary alone for nftables nodes, into
# ARCHIVE with -nftables before .tar.
#
# The base is a minimal Debian (debootstrap from the machine's own Debian
# mirror) with the iptables tools in both modes, made once and kept in
# podman's storage under a tag derived from what it holds. The image adds
# the static binary; nothing in it runs at build time, so the build needs no
# network (podman build --network none) and podman creates none.
set -euo pipefail

binary=$1 image=$2 archive=$3
suite=bookworm
packages=iptables
base="localhost/node-local-coredns-base:${suite}-$(printf '%s' "$suite $packages" | sha256sum | cut -c1-12)"
here=$(cd "$(dirname "$0")" && pwd)

# podman in a harness of its own: runc (this sandbox has hybrid cgroups),
# cgroupfs, no network of podman's.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

for tool in podman debootstrap setcap; do
	command -v "$tool" >/dev/null || { echo "image/build.sh: $tool is needed (apt-get install podman debootstrap runc libcap2-bin)" >&2; exit 1; }
done

mirror() {
	# The first Debian archive apt uses here; DEBIAN_MIRROR overrides it.
	if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
	local m
	m=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -1)
	[ -n "$m" ] || m=$(grep -hs -E '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
	[ -n "$m" ] || { echo "image/build.sh: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
	echo "$m"
}

if ! podman image exists "$base"; then
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	echo "image/build.sh: building the base $base (debootstrap $suite, $packages)"
	debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$(mirror)" >"$root.log" 2>&1 ||
		{ tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
	rm -f "$root.log"
	# What a runtime image does not need: package lists and caches, docs.
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
		"$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
	tar -C "$root" --numeric-owner -c . | podman import --quiet - "$base" >/dev/null
	rm -rf "$root"
	trap - EXIT
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/node-local-coredns"
# The capabilities a non-root agent and watchdog may use, as file
# capabilities, permitted only: the kernel grants those the container's
# bounding set holds (its capabilities.add), and the binary makes them
# effective itself (internal/agent.RaiseCapabilities). podman build keeps
# the attribute.
setcap cap_net_admin,cap_net_bind_service,cap_net_raw,cap_dac_read_search+p "$context/node-local-coredns"
podman build --quiet --network none --pull=never --build-arg "BASE=$base" -t "$image" -f "$here/../Dockerfile" "$context" >/dev/null
mkdir -p "$(dirname "$archive")"
rm -f "$archive"
podman save --quiet --format oci-archive -o "$archive" "$image"
echo "image/build.sh: $image written to $archive"

# The variant for nftables nodes: the binary alone (FROM scratch).
static="$image-nftables" static_archive="${archive%.tar}-nftables.tar"
podman build --quiet --network none --pull=never -t "$static" -f "$here/../Dockerfile.nftables" "$context" >/dev/null
rm -f "$static_archive"
podman save --quiet --format oci-archive -o "$static_archive" "$static"
echo "image/build.sh: $static written to $static_archive"
