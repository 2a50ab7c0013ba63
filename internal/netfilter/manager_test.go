package netfilter

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newTestManager(t *testing.T, ips ...string) (*Manager, map[Family]*fakeTables) {
	t.Helper()
	fakes := map[Family]*fakeTables{IPv4: newFakeTables(), IPv6: newFakeTables()}
	var addrs []netip.Addr
	for _, s := range ips {
		addrs = append(addrs, netip.MustParseAddr(s))
	}
	m, err := NewManager(map[Family]Tables{IPv4: fakes[IPv4], IPv6: fakes[IPv6]}, addrs, Options{Port: 53, SocketMatch: true}, discard)
	if err != nil {
		t.Fatal(err)
	}
	return m, fakes
}

func TestSetupInstallsChainsAndJumpsFirst(t *testing.T) {
	m, fakes := newTestManager(t, "10.0.0.10", "fd00::a")
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	for f, fake := range fakes {
		for _, h := range Hooks {
			builtin := fake.chains[h.Table+"/"+h.Builtin]
			if len(builtin) == 0 || builtin[0] != strings.Join(h.JumpSpec(), " ") {
				t.Errorf("%s %s/%s: jump to %s is not the first rule: %q", f, h.Table, h.Builtin, h.Chain, builtin)
			}
			if n := len(fake.chains[h.Table+"/"+h.Chain]); n != 2 {
				t.Errorf("%s %s/%s holds %d rules, want 2 (udp, tcp)", f, h.Table, h.Chain, n)
			}
		}
	}
	if !m.SocketMatch() {
		t.Error("socket match reported off")
	}
	if n, err := m.Sync(); err != nil || n != 0 {
		t.Errorf("sync right after setup rewrote %d tables (%v), want 0", n, err)
	}
}

func TestSyncRestoresWhatWasRemoved(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(f *fakeTables)
	}{
		{"jump deleted", func(f *fakeTables) { f.chains["raw/PREROUTING"] = nil }},
		{"chain flushed", func(f *fakeTables) { f.chains["filter/NLCOREDNS-INPUT"] = nil }},
		{"chain and jump deleted", func(f *fakeTables) {
			// The kernel refuses to delete a chain a rule jumps to.
			f.chains["raw/OUTPUT"] = nil
			delete(f.chains, "raw/NLCOREDNS-OUTPUT")
		}},
		{"rule changed", func(f *fakeTables) { f.chains["raw/NLCOREDNS-PREROUTING"][0] = "-j ACCEPT" }},
		{"rule added", func(f *fakeTables) {
			f.chains["filter/NLCOREDNS-OUTPUT"] = append(f.chains["filter/NLCOREDNS-OUTPUT"], "-j DROP")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, fakes := newTestManager(t, "10.0.0.10")
			if err := m.Setup(); err != nil {
				t.Fatal(err)
			}
			want := map[string][]string{}
			for k, v := range fakes[IPv4].chains {
				want[k] = append([]string(nil), v...)
			}
			tc.damage(fakes[IPv4])
			n, err := m.Sync()
			if err != nil || n != 1 {
				t.Fatalf("sync rewrote %d tables (%v), want 1", n, err)
			}
			for k, v := range want {
				if strings.Join(fakes[IPv4].chains[k], "\n") != strings.Join(v, "\n") {
					t.Errorf("%s after sync: %q, want %q", k, fakes[IPv4].chains[k], v)
				}
			}
			if len(fakes[IPv6].chains) != 5 || fakes[IPv6].replaces != 0 {
				t.Errorf("IPv6 tables touched for an IPv4-only agent")
			}
		})
	}
}

func TestSetupFallsBackWithoutSocketMatch(t *testing.T) {
	m, fakes := newTestManager(t, "10.0.0.10", "fd00::a")
	fakes[IPv4].refuseSocket = true
	fakes[IPv6].refuseSocket = true
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if m.SocketMatch() {
		t.Error("socket match reported on after the kernel refused it")
	}
	for f, fake := range fakes {
		rules := fake.chains["raw/NLCOREDNS-PREROUTING"]
		if len(rules) != 2 || strings.Contains(strings.Join(rules, " "), "socket") {
			t.Errorf("%s PREROUTING rules: %q, want two without the socket match", f, rules)
		}
	}
}

func TestSetupReplacesLeftovers(t *testing.T) {
	m, fakes := newTestManager(t, "10.0.0.10")
	// An earlier run served another IP and crashed.
	old, _ := newTestManager(t, "10.0.0.99")
	old.tables = map[Family]Tables{IPv4: fakes[IPv4]}
	if err := old.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	all := ""
	for _, v := range fakes[IPv4].chains {
		all += strings.Join(v, "\n")
	}
	if strings.Contains(all, "10.0.0.99") {
		t.Errorf("rules of the earlier run left:\n%s", all)
	}
	if n := strings.Count(fakes[IPv4].chains["raw/PREROUTING"][0], "NLCOREDNS"); n != 1 || len(fakes[IPv4].chains["raw/PREROUTING"]) != 1 {
		t.Errorf("jump duplicated: %q", fakes[IPv4].chains["raw/PREROUTING"])
	}
}

func TestTeardownRemovesOnlyOurs(t *testing.T) {
	m, fakes := newTestManager(t, "10.0.0.10", "fd00::a")
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(); err != nil {
		t.Fatal(err)
	}
	for f, fake := range fakes {
		for k, v := range fake.chains {
			if strings.Contains(k, "NLCOREDNS") || strings.Contains(strings.Join(v, " "), "NLCOREDNS") {
				t.Errorf("%s: %s left: %q", f, k, v)
			}
		}
		if got := fake.chains["filter/INPUT"]; len(got) != 1 || got[0] != "-j KUBE-FIREWALL" {
			t.Errorf("%s: kube-proxy's rule touched: %q", f, got)
		}
	}
	// Again: what is already gone is not an error.
	if err := m.Teardown(); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}

func TestNewManagerNeedsEveryFamily(t *testing.T) {
	_, err := NewManager(map[Family]Tables{IPv4: newFakeTables()}, []netip.Addr{netip.MustParseAddr("fd00::a")}, Options{}, discard)
	if err == nil {
		t.Error("a manager for an IPv6 address without IPv6 tables was created")
	}
}

// Installed tells rules in place, gated or not, from rules missing, and
// does not change what the Manager would install.
func TestInstalled(t *testing.T) {
	m, fakes := newTestManager(t, "10.0.0.10")
	if ok, _, err := m.Installed(); err != nil || ok {
		t.Fatalf("before setup: installed %t (%v)", ok, err)
	}
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if ok, gated, err := m.Installed(); err != nil || !ok || !gated {
		t.Errorf("after setup: installed %t, gated %t (%v); want both", ok, gated, err)
	}
	if !m.SocketMatch() {
		t.Error("Installed changed the Manager's socket match")
	}
	fakes[IPv4].chains["raw/NLCOREDNS-PREROUTING"] = nil
	if ok, _, _ := m.Installed(); ok {
		t.Error("installed with the PREROUTING rules gone")
	}

	ungated, fakes := newTestManager(t, "10.0.0.10")
	fakes[IPv4].refuseSocket = true
	if err := ungated.Setup(); err != nil {
		t.Fatal(err)
	}
	checker, _ := newTestManager(t, "10.0.0.10")
	checker.tables = map[Family]Tables{IPv4: fakes[IPv4]}
	if ok, gated, err := checker.Installed(); err != nil || !ok || gated {
		t.Errorf("ungated rules: installed %t, gated %t (%v); want installed, not gated", ok, gated, err)
	}
}
