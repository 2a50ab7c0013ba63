package agent

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
)

// The capabilities the agent and the watchdog use, and who uses each.
const (
	// the agent's sockets on port 53.
	capNetBindService = unix.CAP_NET_BIND_SERVICE
	// addresses, rules, SO_MARK, forced receive buffers; and every iptables
	// tool.
	capNetAdmin = unix.CAP_NET_ADMIN
	// iptables-legacy's raw socket, for the tools only.
	capNetRaw = unix.CAP_NET_RAW
	// iptables-legacy opening the node's xtables lock, which the first
	// iptables on the node may have created root-only (0600); for the tools
	// only.
	capDACReadSearch = unix.CAP_DAC_READ_SEARCH
)

// checkPrivileges fails with one line saying what to do when the process
// lacks a capability that cfg needs.
func checkPrivileges(cfg config.Config) error {
	caps, err := capSets()
	if err != nil {
		return err
	}
	if (cfg.SetupInterface || cfg.SetupNetfilter) && caps.effective&capMask(capNetAdmin) == 0 {
		return fmt.Errorf("missing capability NET_ADMIN: add it to the container's capabilities (or run as root), or serve on existing addresses with --setup-interface=false --setup-netfilter=false")
	}
	if int(cfg.Port) < unprivilegedPortStart() && caps.effective&capMask(capNetBindService) == 0 {
		return fmt.Errorf("missing capability NET_BIND_SERVICE for --port %d: add it to the container's capabilities (or run as root), or choose a port of %d or above", cfg.Port, unprivilegedPortStart())
	}
	return nil
}

func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}

type capabilitySets struct{ effective, permitted uint64 }

// capSets returns the calling thread's capability sets.
func capSets() (capabilitySets, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return capabilitySets{}, fmt.Errorf("reading capabilities: %w", err)
	}
	return capabilitySets{
		effective: uint64(data[0].Effective) | uint64(data[1].Effective)<<32,
		permitted: uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32,
	}, nil
}

// RaiseCapabilities makes a process that does not run as root usable with
// the capabilities the container gave it. Kubernetes runs a non-root
// container's process with empty effective and ambient sets; the image's
// binary carries its capabilities as file capabilities (permitted only),
// which the kernel grants up to the container's bounding set, even with
// no_new_privs (allowPrivilegeEscalation: false), because the runtime put
// them in the permitted set before the exec. RaiseCapabilities then, on
// every thread:
//   - makes NET_ADMIN and NET_BIND_SERVICE effective for the agent itself;
//   - raises the permitted ones of NET_ADMIN, NET_RAW and DAC_READ_SEARCH to
//     the ambient set, so that the iptables tools it runs (which carry no
//     file capabilities) get them;
//   - drops the rest of the permitted set.
//
// As root it does nothing: root keeps the container's capabilities across
// exec. It needs a binary built without cgo (AllThreadsSyscall).
func RaiseCapabilities() error {
	if os.Geteuid() == 0 {
		return nil
	}
	caps, err := capSets()
	if err != nil {
		return err
	}
	permitted := caps.permitted
	if permitted == 0 {
		return nil // nothing to raise: it serves unprivileged, or says what it lacks
	}
	own := permitted & capMask(capNetAdmin, capNetBindService)
	tools := permitted & capMask(capNetAdmin, capNetRaw, capDACReadSearch)
	set := own | tools
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(own), Permitted: uint32(set), Inheritable: uint32(tools)},
		{Effective: uint32(own >> 32), Permitted: uint32(set >> 32), Inheritable: uint32(tools >> 32)},
	}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	if errno != 0 {
		return fmt.Errorf("raising capabilities: %w", capsetError(errno))
	}
	for c := range 64 {
		if tools&(1<<c) == 0 {
			continue
		}
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c)); errno != 0 {
			return fmt.Errorf("raising capability %d to the ambient set: %w", c, capsetError(errno))
		}
	}
	return nil
}

func capMask(caps ...int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m
}

func capsetError(errno syscall.Errno) error {
	if errno == syscall.ENOTSUP {
		return fmt.Errorf("this binary was built with cgo and cannot change every thread's capabilities; build it with CGO_ENABLED=0 or run as root")
	}
	return errno
}
