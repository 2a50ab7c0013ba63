package server

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

// heldUpstream is kube-dns on loopback, over UDP and TCP on one port: it
// holds the answer to a name starting with "held" until release is closed,
// and answers the rest at once.
type heldUpstream struct {
	addr    netip.AddrPort
	release chan struct{}
}

func startHeldUpstream(t *testing.T) *heldUpstream {
	t.Helper()
	u := &heldUpstream{release: make(chan struct{})}
	u.addr = serveUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		if strings.HasPrefix(q.Name, "held") {
			<-u.release
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		_ = w.WriteMsg(m)
	}))
	// Registered after serveUpstream's, so run before it: nothing is held
	// when the servers stop.
	t.Cleanup(func() {
		select {
		case <-u.release:
		default:
			close(u.release)
		}
	})
	return u
}

// answeredWhileHeld asks the cached name once, then checks that, while the
// query for held waits for the upstream, which holds it, the cached name is
// answered within a second (a hit takes well under a millisecond; a reader
// held by the query would wait for the query's timeout, over a second);
// then lets the upstream answer, and checks the held query's answer.
func answeredWhileHeld(t *testing.T, up *heldUpstream, addr, held, cached string) {
	t.Helper()
	exchange := func(name string) error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		_, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, addr)
		return err
	}
	if err := exchange(cached); err != nil {
		t.Fatal(err)
	}
	heldDone := make(chan error, 1)
	go func() { heldDone <- exchange(held) }()
	time.Sleep(50 * time.Millisecond) // the held query is at the upstream
	cachedDone := make(chan error, 1)
	go func() { cachedDone <- exchange(cached) }()
	select {
	case err := <-cachedDone:
		if err != nil {
			t.Errorf("%s: %v", cached, err)
		}
	case <-time.After(time.Second):
		t.Errorf("%s not answered while %s waits for the upstream: the reader waits with it", cached, held)
	}
	close(up.release)
	if err := <-heldDone; err != nil {
		t.Errorf("%s: %v", held, err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestReaderNeverWaits: a miss goes on in the fast path's reader until it
// waits for kube-dns (package coro), and the wait does not hold the reader:
// while a miss waits for kube-dns, a cached name is answered. (kube-dns gets
// 5 s to answer, so that a reader held by the miss would be held past the
// check.)
func TestReaderNeverWaits(t *testing.T) {
	up := startHeldUpstream(t)
	text := strings.ReplaceAll(corefile.Default, "hedge 100ms 500ms", "hedge 5s 5s")
	text = strings.ReplaceAll(text, "read_timeout 900ms", "read_timeout 5s")
	if strings.Count(text, "hedge 5s 5s") != 2 || strings.Count(text, "read_timeout 5s") != 2 {
		t.Fatal("the built-in Corefile's spread timeouts are not where the test looks for them")
	}
	addr := startBuiltInText(t, up.addr, text)
	answeredWhileHeld(t, up, addr, "held.example.org.", "cached.example.org.")
}

// TestReaderNeverWaitsAside: a query CoreDNS's server hands to a block
// without fastcache on the same address (a longer zone, forwarded by
// forward, which waits in the goroutine it runs in) is not run in the
// reader: while it waits for the upstream (forward's 2 s), a cached name is
// answered.
func TestReaderNeverWaitsAside(t *testing.T) {
	up := startHeldUpstream(t)
	text := corefile.Default + `
held.example.org:{{ .Port }} {
    bind {{ join .LocalIPs " " }}
    forward . {{ index .Upstreams 0 }}
}
`
	addr := startBuiltInText(t, up.addr, text)
	answeredWhileHeld(t, up, addr, "held.example.org.", "cached.example.org.")
}
