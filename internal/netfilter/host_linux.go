package netfilter

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipvsLink is the link kube-proxy's IPVS mode puts every ClusterIP on.
const ipvsLink = "kube-ipvs0"

// IPVSHolds returns the first of ips that kube-ipvs0 holds, or the zero
// Addr when there is no such link or it holds none of them.
func IPVSHolds(ips []netip.Addr) (netip.Addr, error) {
	link, err := netlink.LinkByName(ipvsLink)
	if err != nil {
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return netip.Addr{}, nil
		}
		return netip.Addr{}, fmt.Errorf("looking for %s: %w", ipvsLink, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing the addresses of %s: %w", ipvsLink, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		for _, want := range ips {
			if ip.Unmap() == want {
				return want, nil
			}
		}
	}
	return netip.Addr{}, nil
}

// ipt_getinfo (linux/netfilter_ipv4/ip_tables.h; ip6t_getinfo is the same).
type iptGetinfo struct {
	Name       [32]byte
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
	NumEntries uint32
	Size       uint32
}

const iptSoGetInfo = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO

// LegacyKernelRules returns how many rules the kernel's iptables-legacy
// tables of the families hold beyond their built-in chains (a user chain
// counts too), read as iptables-legacy reads them, without its tools. It
// needs CAP_NET_RAW (the raw socket) and CAP_NET_ADMIN.
func LegacyKernelRules(families ...Family) (int, error) {
	// The agent holds NET_RAW and DAC_READ_SEARCH only for the iptables
	// tools (permitted, not effective): effective on this thread for the
	// read, and back after it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	restore := raise(unix.CAP_NET_RAW, unix.CAP_DAC_READ_SEARCH)
	defer restore()
	return legacyKernelRules(families)
}

// raise makes the permitted ones of caps effective on the calling thread
// and returns what puts the thread's sets back. Capabilities not permitted
// are left out (the read then fails with a message that names them).
func raise(caps ...int) func() {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var was [2]unix.CapUserData
	if err := unix.Capget(&hdr, &was[0]); err != nil {
		return func() {}
	}
	now := was
	for _, c := range caps {
		if was[c/32].Permitted&(1<<(c%32)) != 0 {
			now[c/32].Effective |= 1 << (c % 32)
		}
	}
	if now == was || unix.Capset(&hdr, &now[0]) != nil {
		return func() {}
	}
	return func() { _ = unix.Capset(&hdr, &was[0]) }
}

func legacyKernelRules(families []Family) (int, error) {
	total := 0
	for _, f := range families {
		names, level, domain := "/proc/thread-self/net/ip_tables_names", unix.SOL_IP, unix.AF_INET
		if f == IPv6 {
			names, level, domain = "/proc/thread-self/net/ip6_tables_names", unix.SOL_IPV6, unix.AF_INET6
		}
		// thread-self: the thread's namespace (a caller may have entered
		// one on a locked thread), which /proc/net, the process's, is not.
		b, err := os.ReadFile(names)
		if errors.Is(err, os.ErrNotExist) {
			continue // no legacy tables module
		}
		if err != nil {
			return 0, fmt.Errorf("reading %s to find the iptables-legacy tables: %w (it is root's alone: give the agent DAC_READ_SEARCH)", names, err)
		}
		tables := strings.Fields(string(b))
		if len(tables) == 0 {
			continue
		}
		fd, err := unix.Socket(domain, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return 0, fmt.Errorf("opening a raw socket to read the iptables-legacy tables: %w (give the agent NET_RAW)", err)
		}
		for _, t := range tables {
			var info iptGetinfo
			copy(info.Name[:], t)
			size := uint32(unsafe.Sizeof(info))
			_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), iptSoGetInfo,
				uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
			if e != 0 {
				unix.Close(fd)
				return 0, fmt.Errorf("reading the iptables-legacy %s table of %s: %w (give the agent NET_ADMIN and NET_RAW)", t, f, e)
			}
			// Each built-in chain is an entry (its policy), and one more
			// ends the table.
			builtin := bits.OnesCount32(info.ValidHooks) + 1
			if n := int(info.NumEntries) - builtin; n > 0 {
				total += n
			}
		}
		unix.Close(fd)
	}
	return total, nil
}

// IptablesNFTFilter reports whether iptables-nft's filter table of one of
// the families holds rules in INPUT or OUTPUT, or drops there by policy.
func IptablesNFTFilter(families ...Family) (bool, error) {
	conn, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("opening netlink to nftables: %w", err)
	}
	chains, err := conn.ListChains()
	if err != nil {
		return false, fmt.Errorf("listing nftables chains: %w (give the agent NET_ADMIN)", err)
	}
	for _, c := range chains {
		fam := map[nftables.TableFamily]Family{nftables.TableFamilyIPv4: IPv4, nftables.TableFamilyIPv6: IPv6}
		f, ok := fam[c.Table.Family]
		if !ok || c.Table.Name != "filter" || (c.Name != "INPUT" && c.Name != "OUTPUT") || !slices.Contains(families, f) {
			continue
		}
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			return true, nil
		}
		rules, err := ruleRefs(c)
		if err != nil {
			return false, err
		}
		if len(rules) > 0 {
			return true, nil
		}
	}
	return false, nil
}
