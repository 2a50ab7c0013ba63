// Package netif puts the local IPs on a node interface: an existing one
// (such as the cbr0 bridge) or one the agent creates and later deletes.
package netif

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
)

// Alias marks an interface the agent created, so that a restarted agent
// recognises (and later deletes) what a crashed one left behind.
const Alias = "node-local-coredns"

// Link is what the Manager needs from the kernel: the netlink calls on one
// network namespace. netlinkLink implements it; tests use a fake.
type Link interface {
	// Exists reports whether the interface exists and, if so, its alias.
	Exists(name string) (exists bool, alias string, err error)
	// Create creates an interface of kind ("dummy" or "bridge") with alias, up.
	Create(name, kind, alias string) error
	// Delete deletes the interface.
	Delete(name string) error
	// SetUp sets the interface administratively up.
	SetUp(name string) error
	// Addrs lists the interface's addresses.
	Addrs(name string) ([]netip.Addr, error)
	// AddAddr adds a host address (/32 or /128, no DAD).
	AddAddr(name string, ip netip.Addr) error
	// DelAddr removes an address; an address already gone is not an error.
	DelAddr(name string, ip netip.Addr) error
}

// ErrNoDummy is returned by Link.Create when the kernel has no dummy links.
var ErrNoDummy = errors.New("kernel has no dummy link type")

// Manager owns the local IPs on one interface.
type Manager struct {
	link  Link
	name  string
	addrs []netip.Addr
	log   *slog.Logger

	// created is true when the interface is ours: created by this run or
	// left behind by an earlier one (it carries Alias).
	created bool
	// kind is the link kind we created ("dummy" or "bridge").
	kind string
}

// NewManager returns a Manager for addrs on the interface name.
func NewManager(link Link, name string, addrs []netip.Addr, log *slog.Logger) *Manager {
	return &Manager{link: link, name: name, addrs: addrs, log: log}
}

// Name names the step for logs and metrics.
func (m *Manager) Name() string { return "interface" }

// Shared implements agent.Shared: the addresses serve every agent on the
// node.
func (m *Manager) Shared() bool { return true }

// Created reports whether the agent owns (and will delete) the interface.
func (m *Manager) Created() bool { return m.created }

// Setup creates the interface if it is missing and adds the addresses.
func (m *Manager) Setup() error {
	exists, alias, err := m.link.Exists(m.name)
	if err != nil {
		return fmt.Errorf("looking up interface %s: %w", m.name, err)
	}
	switch {
	case exists && alias == Alias:
		m.created = true
		m.log.Info("adopting interface left by an earlier run", "interface", m.name)
		if err := m.removeStrays(); err != nil {
			return err
		}
	case exists:
		m.log.Info("using existing interface", "interface", m.name)
	default:
		if err := m.create(); err != nil {
			return err
		}
	}
	if err := m.link.SetUp(m.name); err != nil {
		return fmt.Errorf("setting %s up: %w", m.name, err)
	}
	_, err = m.ensureAddrs()
	return err
}

func (m *Manager) create() error {
	err := m.link.Create(m.name, "dummy", Alias)
	m.kind = "dummy"
	if errors.Is(err, ErrNoDummy) {
		m.log.Warn("kernel has no dummy interfaces; creating a port-less bridge instead", "interface", m.name)
		err = m.link.Create(m.name, "bridge", Alias)
		m.kind = "bridge"
	}
	if err != nil {
		return fmt.Errorf("creating %s interface %s: %w", m.kind, m.name, err)
	}
	m.created = true
	m.log.Info("created interface", "interface", m.name, "kind", m.kind)
	return nil
}

// removeStrays removes addresses from our own interface that are not
// configured now (an earlier run's local IPs).
func (m *Manager) removeStrays() error {
	have, err := m.link.Addrs(m.name)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", m.name, err)
	}
	for _, ip := range have {
		if ip.IsLinkLocalUnicast() || m.wanted(ip) {
			continue
		}
		if err := m.link.DelAddr(m.name, ip); err != nil {
			return fmt.Errorf("removing stray %s from %s: %w", ip, m.name, err)
		}
		m.log.Info("removed stray address", "interface", m.name, "address", ip)
	}
	return nil
}

func (m *Manager) wanted(ip netip.Addr) bool {
	for _, w := range m.addrs {
		if w == ip {
			return true
		}
	}
	return false
}

// ensureAddrs adds every missing address and returns how many it added.
func (m *Manager) ensureAddrs() (int, error) {
	have, err := m.link.Addrs(m.name)
	if err != nil {
		return 0, fmt.Errorf("listing addresses of %s: %w", m.name, err)
	}
	added := 0
	for _, ip := range m.addrs {
		if contains(have, ip) {
			continue
		}
		if err := m.link.AddAddr(m.name, ip); err != nil {
			return added, fmt.Errorf("adding %s to %s: %w", ip, m.name, err)
		}
		added++
	}
	return added, nil
}

// Sync puts back the interface (if ours) and any address someone removed.
// It returns how many things it restored.
func (m *Manager) Sync() (int, error) {
	exists, _, err := m.link.Exists(m.name)
	if err != nil {
		return 0, fmt.Errorf("looking up interface %s: %w", m.name, err)
	}
	restored := 0
	if !exists {
		if !m.created {
			return 0, fmt.Errorf("interface %s is gone", m.name)
		}
		if err := m.create(); err != nil {
			return 0, err
		}
		if err := m.link.SetUp(m.name); err != nil {
			return 1, fmt.Errorf("setting %s up: %w", m.name, err)
		}
		restored++
	}
	n, err := m.ensureAddrs()
	return restored + n, err
}

// Teardown removes the addresses and, if the agent owns it, the interface.
// Things already gone are not errors.
func (m *Manager) Teardown() error {
	exists, _, err := m.link.Exists(m.name)
	if err != nil {
		return fmt.Errorf("looking up interface %s: %w", m.name, err)
	}
	if !exists {
		return nil
	}
	if m.created {
		if err := m.link.Delete(m.name); err != nil {
			return fmt.Errorf("deleting interface %s: %w", m.name, err)
		}
		return nil
	}
	var errs []error
	for _, ip := range m.addrs {
		if err := m.link.DelAddr(m.name, ip); err != nil {
			errs = append(errs, fmt.Errorf("removing %s from %s: %w", ip, m.name, err))
		}
	}
	return errors.Join(errs...)
}

func contains(list []netip.Addr, ip netip.Addr) bool {
	for _, a := range list {
		if a == ip {
			return true
		}
	}
	return false
}

// hostPrefix returns ip as a host route prefix (/32 or /128).
func hostPrefix(ip netip.Addr) *net.IPNet {
	bits := ip.BitLen()
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}
