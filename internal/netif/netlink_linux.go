package netif

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the Link of the calling thread's network namespace.
type Netlink struct{}

var _ Link = Netlink{}

// lookup returns the link called name, or nil when there is none.
func lookup(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	return l, err
}

// Exists implements Link.
func (Netlink) Exists(name string) (bool, string, error) {
	l, err := lookup(name)
	if err != nil || l == nil {
		return false, "", err
	}
	return true, l.Attrs().Alias, nil
}

// Create implements Link.
func (Netlink) Create(name, kind, alias string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	var l netlink.Link
	switch kind {
	case "dummy":
		l = &netlink.Dummy{LinkAttrs: attrs}
	case "bridge":
		l = &netlink.Bridge{LinkAttrs: attrs}
	default:
		return fmt.Errorf("unknown link kind %q", kind)
	}
	if err := netlink.LinkAdd(l); err != nil {
		// The kernel answers EOPNOTSUPP for an unknown link kind.
		if kind == "dummy" && errors.Is(err, unix.EOPNOTSUPP) {
			return ErrNoDummy
		}
		return err
	}
	if err := netlink.LinkSetAlias(l, alias); err != nil {
		_ = netlink.LinkDel(l)
		return fmt.Errorf("setting alias: %w", err)
	}
	return nil
}

// Delete implements Link.
func (Netlink) Delete(name string) error {
	l, err := lookup(name)
	if err != nil || l == nil {
		return err
	}
	return netlink.LinkDel(l)
}

// SetUp implements Link.
func (Netlink) SetUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// Addrs implements Link.
func (Netlink) Addrs(name string) ([]netip.Addr, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// AddAddr implements Link.
func (Netlink) AddAddr(name string, ip netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: hostPrefix(ip)}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// DelAddr implements Link.
func (Netlink) DelAddr(name string, ip netip.Addr) error {
	l, err := lookup(name)
	if err != nil || l == nil {
		return err
	}
	err = netlink.AddrDel(l, &netlink.Addr{IPNet: hostPrefix(ip)})
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
