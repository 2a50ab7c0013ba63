package fastcache

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestLimiter(t *testing.T) {
	a, b := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.11")
	ms := func(n int64) int64 { return n * int64(time.Millisecond) }
	l := newLimiter(10, 2) // 10 a second, 2 at once
	for i, step := range []struct {
		client netip.Addr
		at     int64
		want   bool
	}{
		{a, 0, true}, {a, 0, true}, {a, 0, false}, // the burst, then nothing
		{b, 0, true},       // another client has its own
		{a, ms(50), false}, // half a token back
		{a, ms(100), true}, // one token back
		{a, ms(100), false},
		{a, ms(10_000), true}, {a, ms(10_000), true}, {a, ms(10_000), false}, // refilled to the burst, no more
		{a, ms(9_000), false}, // time going back gives nothing
	} {
		if got := l.allow(step.client, step.at); got != step.want {
			t.Errorf("step %d: allow(%s, %d ms) = %v, want %v", i, step.client, step.at/int64(time.Millisecond), got, step.want)
		}
	}
}

func TestLimiterForgetsPastMaxClients(t *testing.T) {
	l := newLimiter(1, 1)
	first := netip.MustParseAddr("10.0.0.1")
	if !l.allow(first, 0) || l.allow(first, 0) {
		t.Fatal("the first client's burst of one")
	}
	for i := range maxClients {
		l.allow(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 0)
	}
	if len(l.clients) > maxClients {
		t.Fatalf("%d clients tracked, want at most %d", len(l.clients), maxClients)
	}
	// The table started over: the first client has a fresh burst.
	if !l.allow(first, 0) {
		t.Error("the table did not start over past maxClients")
	}
}

// TestMissLimitInTheChain: over TCP (not the fast path's reader), a client
// past its rate gets no answer, and the server blocks on one address share
// its budget.
func TestMissLimitInTheChain(t *testing.T) {
	up := authServer(t)
	addr := startCoreDNS(t, ". example.net.", "    misslimit 1 2\n    fastcache {\n        success 1000 30\n    }\n    forward . "+up)
	fastConn(t, addr)
	ask := func(name string) error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		_, _, err := (&dns.Client{Net: "tcp", Timeout: 500 * time.Millisecond}).Exchange(m, addr)
		return err
	}
	for i, name := range []string{"a.example.org.", "b.example.net."} {
		if err := ask(name); err != nil {
			t.Fatalf("query %d, within the burst: %v", i, err)
		}
	}
	if err := ask("c.example.org."); err == nil {
		t.Error("a third query at once was answered; misslimit 1 2 allows two on the address, whatever the zone")
	}
}
