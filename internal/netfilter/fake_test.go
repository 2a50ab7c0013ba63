package netfilter

import (
	"errors"
	"slices"
	"strings"
)

// fakeTables is an in-memory Tables. Rules are kept as joined specs per
// table/chain; built-in chains always exist.
type fakeTables struct {
	chains map[string][]string // "table/chain" -> specs
	// refuseSocket makes Replace fail on rules with the socket match, as a
	// kernel without xt_socket does.
	refuseSocket bool
	replaces     int
}

func newFakeTables() *fakeTables {
	f := &fakeTables{chains: map[string][]string{}}
	for _, c := range []string{"raw/PREROUTING", "raw/OUTPUT", "filter/INPUT", "filter/OUTPUT", "filter/FORWARD"} {
		f.chains[c] = nil
	}
	// Something kube-proxy put there first.
	f.chains["filter/INPUT"] = []string{"-j KUBE-FIREWALL"}
	return f
}

func (f *fakeTables) Mode() string { return "fake" }

func (f *fakeTables) ChainExists(table, chain string) (bool, error) {
	_, ok := f.chains[table+"/"+chain]
	return ok, nil
}

func (f *fakeTables) Rules(table, chain string) (int, error) {
	rules, ok := f.chains[table+"/"+chain]
	if !ok {
		return 0, errors.New("no chain")
	}
	return len(rules), nil
}

func (f *fakeTables) Exists(table, chain string, spec []string) (bool, error) {
	return slices.Contains(f.chains[table+"/"+chain], strings.Join(spec, " ")), nil
}

func (f *fakeTables) Replace(table string, chains map[string][][]string, jumps []Hook) error {
	if f.refuseSocket {
		for _, rules := range chains {
			for _, r := range rules {
				if slices.Contains(r, "socket") {
					return errors.New("iptables-restore: Couldn't load match `socket'")
				}
			}
		}
	}
	f.replaces++
	for c, rules := range chains {
		var specs []string
		for _, r := range rules {
			specs = append(specs, strings.Join(r, " "))
		}
		f.chains[table+"/"+c] = specs
	}
	for _, h := range jumps {
		key := table + "/" + h.Builtin
		f.chains[key] = append([]string{strings.Join(h.JumpSpec(), " ")}, f.chains[key]...)
	}
	return nil
}

func (f *fakeTables) DeleteRule(table, chain string, spec []string) error {
	key := table + "/" + chain
	f.chains[key] = slices.DeleteFunc(f.chains[key], func(s string) bool { return s == strings.Join(spec, " ") })
	return nil
}

func (f *fakeTables) DeleteChain(table, chain string) error {
	delete(f.chains, table+"/"+chain)
	return nil
}
