package netif

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakeLink struct {
	links   map[string]*fakeIface
	noDummy bool
}

type fakeIface struct {
	kind, alias string
	up          bool
	addrs       []netip.Addr
}

func newFakeLink() *fakeLink { return &fakeLink{links: map[string]*fakeIface{}} }

func (f *fakeLink) Exists(name string) (bool, string, error) {
	l, ok := f.links[name]
	if !ok {
		return false, "", nil
	}
	return true, l.alias, nil
}
func (f *fakeLink) Create(name, kind, alias string) error {
	if kind == "dummy" && f.noDummy {
		return ErrNoDummy
	}
	f.links[name] = &fakeIface{kind: kind, alias: alias}
	return nil
}
func (f *fakeLink) Delete(name string) error { delete(f.links, name); return nil }
func (f *fakeLink) SetUp(name string) error  { f.links[name].up = true; return nil }
func (f *fakeLink) Addrs(name string) ([]netip.Addr, error) {
	return slices.Clone(f.links[name].addrs), nil
}
func (f *fakeLink) AddAddr(name string, ip netip.Addr) error {
	f.links[name].addrs = append(f.links[name].addrs, ip)
	return nil
}
func (f *fakeLink) DelAddr(name string, ip netip.Addr) error {
	if l, ok := f.links[name]; ok {
		l.addrs = slices.DeleteFunc(l.addrs, func(a netip.Addr) bool { return a == ip })
	}
	return nil
}

var (
	clusterIP  = netip.MustParseAddr("172.27.255.78")
	clusterIP6 = netip.MustParseAddr("fd00:96::a")
	bridgeIP   = netip.MustParseAddr("10.244.1.1")
)

func TestCreatesDummyOrBridgeAndDeletesIt(t *testing.T) {
	for _, tc := range []struct {
		noDummy  bool
		wantKind string
	}{{false, "dummy"}, {true, "bridge"}} {
		t.Run(tc.wantKind, func(t *testing.T) {
			link := newFakeLink()
			link.noDummy = tc.noDummy
			m := NewManager(link, "nodelocaldns", []netip.Addr{clusterIP, clusterIP6}, discard)
			if err := m.Setup(); err != nil {
				t.Fatal(err)
			}
			l := link.links["nodelocaldns"]
			if l == nil || l.kind != tc.wantKind || l.alias != Alias || !l.up {
				t.Fatalf("interface %+v, want an up %s with alias %q", l, tc.wantKind, Alias)
			}
			if !slices.Equal(l.addrs, []netip.Addr{clusterIP, clusterIP6}) {
				t.Errorf("addresses %v", l.addrs)
			}
			if err := m.Teardown(); err != nil {
				t.Fatal(err)
			}
			if _, ok := link.links["nodelocaldns"]; ok {
				t.Error("created interface not deleted")
			}
		})
	}
}

// On an existing interface (cbr0) only the local IPs are added and removed.
func TestExistingInterfaceKeepsItsOwnAddresses(t *testing.T) {
	link := newFakeLink()
	link.links["cbr0"] = &fakeIface{kind: "bridge", up: true, addrs: []netip.Addr{bridgeIP}}
	m := NewManager(link, "cbr0", []netip.Addr{clusterIP}, discard)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if m.Created() {
		t.Error("cbr0 taken as created by the agent")
	}
	if got := link.links["cbr0"].addrs; !slices.Equal(got, []netip.Addr{bridgeIP, clusterIP}) {
		t.Errorf("addresses %v", got)
	}
	if err := m.Teardown(); err != nil {
		t.Fatal(err)
	}
	if got := link.links["cbr0"].addrs; !slices.Equal(got, []netip.Addr{bridgeIP}) {
		t.Errorf("after teardown cbr0 holds %v, want only its own address", got)
	}
}

// An interface an earlier (crashed) run created is adopted: its stray
// addresses go, and it is deleted at teardown.
func TestAdoptsInterfaceLeftBehind(t *testing.T) {
	link := newFakeLink()
	old := netip.MustParseAddr("172.27.0.10")
	link.links["nodelocaldns"] = &fakeIface{kind: "bridge", alias: Alias, addrs: []netip.Addr{old, clusterIP}}
	m := NewManager(link, "nodelocaldns", []netip.Addr{clusterIP}, discard)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if !m.Created() {
		t.Error("interface left behind not adopted")
	}
	if got := link.links["nodelocaldns"].addrs; !slices.Equal(got, []netip.Addr{clusterIP}) {
		t.Errorf("addresses %v, want only %s", got, clusterIP)
	}
	if err := m.Teardown(); err != nil {
		t.Fatal(err)
	}
	if _, ok := link.links["nodelocaldns"]; ok {
		t.Error("adopted interface not deleted")
	}
}

func TestSyncPutsBackAddressesAndInterface(t *testing.T) {
	link := newFakeLink()
	m := NewManager(link, "nodelocaldns", []netip.Addr{clusterIP, clusterIP6}, discard)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if n, err := m.Sync(); n != 0 || err != nil {
		t.Errorf("sync of an intact interface restored %d (%v)", n, err)
	}
	_ = link.DelAddr("nodelocaldns", clusterIP6)
	if n, err := m.Sync(); n != 1 || err != nil {
		t.Errorf("sync after an address was removed restored %d (%v), want 1", n, err)
	}
	delete(link.links, "nodelocaldns")
	if n, err := m.Sync(); n != 3 || err != nil {
		t.Errorf("sync after the interface was deleted restored %d (%v), want 3", n, err)
	}
	if got := link.links["nodelocaldns"].addrs; len(got) != 2 {
		t.Errorf("addresses after sync: %v", got)
	}

	// An interface that is not ours is not recreated.
	link.links["cbr0"] = &fakeIface{kind: "bridge"}
	m2 := NewManager(link, "cbr0", []netip.Addr{clusterIP}, discard)
	if err := m2.Setup(); err != nil {
		t.Fatal(err)
	}
	delete(link.links, "cbr0")
	if _, err := m2.Sync(); err == nil {
		t.Error("sync recreated (or ignored the loss of) an interface the agent does not own")
	}
}
