package netfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// Tables is one address family's packet filter as the Manager uses it.
// Iptables implements it; tests use an in-memory fake.
type Tables interface {
	// ChainExists reports whether table has chain.
	ChainExists(table, chain string) (bool, error)
	// Rules returns the number of rules in chain.
	Rules(table, chain string) (int, error)
	// Exists reports whether chain holds a rule with spec.
	Exists(table, chain string, spec []string) (bool, error)
	// Replace atomically sets the content of the given chains of table
	// (creating them) and inserts the given jumps at the top of their
	// built-in chains.
	Replace(table string, chains map[string][][]string, jumps []Hook) error
	// DeleteRule deletes a rule; a rule or chain already gone is not an error.
	DeleteRule(table, chain string, spec []string) error
	// DeleteChain flushes and deletes a chain; a chain already gone is not an error.
	DeleteChain(table, chain string) error
	// Mode names the backend ("iptables-nft", "ip6tables-legacy", ...).
	Mode() string
}

// Manager owns the agent's rules for a set of local IPs.
type Manager struct {
	tables map[Family]Tables
	ips    []netip.Addr
	opts   Options
	log    *slog.Logger

	// socketFallback is set when the kernel refused the socket match and the
	// PREROUTING rules divert without it.
	socketFallback bool
}

// NewManager returns a Manager for ips; tables holds one Tables for each
// family that ips use.
func NewManager(tables map[Family]Tables, ips []netip.Addr, opts Options, log *slog.Logger) (*Manager, error) {
	for _, ip := range ips {
		if tables[FamilyOf(ip)] == nil {
			return nil, fmt.Errorf("no %s packet filter for %s", FamilyOf(ip), ip)
		}
	}
	return &Manager{tables: tables, ips: ips, opts: opts, log: log}, nil
}

// Name names the step for logs and metrics.
func (m *Manager) Name() string { return "rules" }

// SocketMatch reports whether the PREROUTING rules are gated on a bound socket.
func (m *Manager) SocketMatch() bool { return m.opts.SocketMatch && !m.socketFallback }

// desired returns, for family f, the content of each of the agent's chains
// by table, as the Manager installs them.
func (m *Manager) desired(f Family) map[string]map[string][][]string {
	return m.desiredWith(f, m.SocketMatch())
}

// desiredWith is desired with or without the socket match.
func (m *Manager) desiredWith(f Family, socket bool) map[string]map[string][][]string {
	opts := m.opts
	opts.SocketMatch = socket
	out := map[string]map[string][][]string{}
	for _, h := range m.hooks() {
		if out[h.Table] == nil {
			out[h.Table] = map[string][][]string{}
		}
		out[h.Table][h.Chain] = [][]string{}
	}
	for _, ip := range m.ips {
		if FamilyOf(ip) != f {
			continue
		}
		for _, r := range Rules(ip, opts) {
			if out[r.Table] == nil {
				continue
			}
			out[r.Table][r.Chain] = append(out[r.Table][r.Chain], r.Spec)
		}
	}
	return out
}

// hooks returns the chains the Manager writes: all of Hooks, or with
// FilterOnly the filter table's.
func (m *Manager) hooks() []Hook {
	if !m.opts.FilterOnly {
		return Hooks
	}
	var out []Hook
	for _, h := range Hooks {
		if h.Table == "filter" {
			out = append(out, h)
		}
	}
	return out
}

// Mode names the backend of the families in use.
func (m *Manager) Mode() string {
	var modes []string
	for _, f := range m.families() {
		modes = append(modes, m.tables[f].Mode())
	}
	return strings.Join(modes, ", ")
}

// families returns the families in use, IPv4 first.
func (m *Manager) families() []Family {
	var out []Family
	for _, f := range []Family{IPv4, IPv6} {
		for _, ip := range m.ips {
			if FamilyOf(ip) == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// Setup writes the agent's chains and jumps, replacing whatever an earlier
// run left in them. When the kernel refuses the socket match it falls back
// to ungated rules and says so.
func (m *Manager) Setup() error {
	if m.opts.FilterOnly {
		// The raw chains of an earlier agent on the iptables backend: the
		// native table holds the NOTRACK rules now.
		for _, f := range m.families() {
			if err := removeHooks(m.tables[f], "raw"); err != nil {
				return err
			}
		}
	}
	for _, f := range m.families() {
		err := m.write(f)
		if err != nil && m.SocketMatch() {
			m.socketFallback = true
			if err2 := m.write(f); err2 != nil {
				m.socketFallback = false
				return errors.Join(err, err2)
			}
			m.log.Warn("kernel refused the socket match: queries are diverted even while no agent listens; a crashed agent leaves this node's DNS broken until it is back",
				"family", f, "error", err)
			// Rewrite the families already written without the match.
			for _, g := range m.families() {
				if g == f {
					break
				}
				if err := m.write(g); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// write replaces the agent's chains of family f in every table, adding the
// jumps that are missing.
func (m *Manager) write(f Family) error {
	t := m.tables[f]
	for table, chains := range m.desired(f) {
		var jumps []Hook
		for _, h := range Hooks {
			if h.Table != table {
				continue
			}
			ok, err := m.jumpExists(t, h)
			if err != nil {
				return err
			}
			if !ok {
				jumps = append(jumps, h)
			}
		}
		if err := t.Replace(table, chains, jumps); err != nil {
			return fmt.Errorf("writing %s chains in %s/%s: %w", f, t.Mode(), table, err)
		}
	}
	return nil
}

func (m *Manager) jumpExists(t Tables, h Hook) (bool, error) {
	ok, err := t.ChainExists(h.Table, h.Chain)
	if err != nil || !ok {
		return false, err
	}
	ok, err = t.Exists(h.Table, h.Builtin, h.JumpSpec())
	if err != nil {
		return false, fmt.Errorf("checking jump %s/%s -> %s in %s: %w", h.Table, h.Builtin, h.Chain, t.Mode(), err)
	}
	return ok, nil
}

// Sync checks every chain, rule and jump and rewrites a table whose content
// is not what it should be. It returns the number of tables it rewrote.
func (m *Manager) Sync() (int, error) {
	restored := 0
	var errs []error
	for _, f := range m.families() {
		t := m.tables[f]
		for table, chains := range m.desired(f) {
			ok, err := m.inSync(t, table, chains)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if ok {
				continue
			}
			var jumps []Hook
			for _, h := range Hooks {
				if h.Table != table {
					continue
				}
				if ok, err := m.jumpExists(t, h); err != nil {
					errs = append(errs, err)
				} else if !ok {
					jumps = append(jumps, h)
				}
			}
			if err := t.Replace(table, chains, jumps); err != nil {
				errs = append(errs, fmt.Errorf("restoring %s chains in %s/%s: %w", f, t.Mode(), table, err))
				continue
			}
			m.log.Warn("restored rules that were missing or changed", "family", f, "backend", t.Mode(), "table", table)
			restored++
		}
	}
	return restored, errors.Join(errs...)
}

func (m *Manager) inSync(t Tables, table string, chains map[string][][]string) (bool, error) {
	for _, h := range Hooks {
		if h.Table != table {
			continue
		}
		ok, err := m.jumpExists(t, h)
		if err != nil || !ok {
			return false, err
		}
		want := chains[h.Chain]
		n, err := t.Rules(table, h.Chain)
		if err != nil {
			return false, fmt.Errorf("listing %s/%s in %s: %w", table, h.Chain, t.Mode(), err)
		}
		if n != len(want) {
			return false, nil
		}
		for _, spec := range want {
			ok, err := t.Exists(table, h.Chain, spec)
			if err != nil {
				return false, fmt.Errorf("checking rule in %s/%s in %s: %w", table, h.Chain, t.Mode(), err)
			}
			if !ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// Installed reports whether every chain, rule and jump is in place, with
// or without the socket match (a kernel without it gets ungated rules), and
// whether they are gated on the socket.
func (m *Manager) Installed() (ok, gated bool, err error) {
	for _, socket := range []bool{true, false} {
		all := true
		for _, f := range m.families() {
			for table, chains := range m.desiredWith(f, socket) {
				in, err := m.inSync(m.tables[f], table, chains)
				if err != nil {
					return false, false, err
				}
				all = all && in
			}
		}
		if all {
			return true, socket, nil
		}
	}
	return false, false, nil
}

// Teardown removes the jumps, then the agent's chains, for every family
// in use. Things already gone are not errors.
func (m *Manager) Teardown() error {
	var errs []error
	for _, f := range m.families() {
		errs = append(errs, Remove(m.tables[f]))
	}
	return errors.Join(errs...)
}

// Remove deletes the agent's jumps and chains from t, and the watchdog's
// fence, whoever installed them: the way to clean up after an agent that
// cannot.
func Remove(t Tables) error { return removeHooks(t, "") }

// removeHooks removes the jumps and chains of table (every table if "").
func removeHooks(t Tables, table string) error {
	var hooks []Hook
	for _, h := range append([]Hook{fenceHook}, Hooks...) {
		if table == "" || h.Table == table {
			hooks = append(hooks, h)
		}
	}
	var errs []error
	for _, h := range hooks {
		if err := t.DeleteRule(h.Table, h.Builtin, h.JumpSpec()); err != nil {
			errs = append(errs, fmt.Errorf("deleting jump %s/%s -> %s in %s: %w", h.Table, h.Builtin, h.Chain, t.Mode(), err))
		}
	}
	for _, h := range hooks {
		if err := t.DeleteChain(h.Table, h.Chain); err != nil {
			errs = append(errs, fmt.Errorf("deleting chain %s/%s in %s: %w", h.Table, h.Chain, t.Mode(), err))
		}
	}
	return errors.Join(errs...)
}
