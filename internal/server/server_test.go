package server

import (
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a DNS server on loopback that answers every A query and
// counts them.
func upstream(t *testing.T) (addr string, count *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	count = new(atomic.Int64)
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		count.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		_ = w.WriteMsg(m)
	})}
	go s.ActivateAndServe() //nolint:errcheck
	t.Cleanup(func() { _ = s.Shutdown() })
	return pc.LocalAddr().String(), count
}

func TestServesCachesAndStops(t *testing.T) {
	up, count := upstream(t)
	corefile := fmt.Sprintf(".:0 {\n    bind 127.0.0.1\n    cache 30\n    forward . %s\n}\n", up)
	s, err := Start(func() (string, error) { return corefile, nil })
	if err != nil {
		t.Fatal(err)
	}
	udp, _ := s.Addrs()
	if len(udp) != 1 {
		t.Fatalf("listening on %v, want one UDP address", udp)
	}
	c := &dns.Client{Timeout: 2 * time.Second}
	for range 3 {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		r, _, err := c.Exchange(m, udp[0])
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("query: %v %v", r, err)
		}
	}
	if got := count.Load(); got != 1 {
		t.Errorf("upstream got %d queries, want 1 (the rest from the cache)", got)
	}
	if s.Corefile() != corefile {
		t.Errorf("running Corefile %q", s.Corefile())
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	c.Timeout = 300 * time.Millisecond
	if _, _, err := c.Exchange(m, udp[0]); err == nil {
		t.Error("still answering after Stop")
	}
}

func TestStartRefusesBadCorefile(t *testing.T) {
	for _, corefile := range []string{
		".:0 {\n    bind 127.0.0.1\n    no_such_plugin\n}\n",
		".:0 {\n    bind 127.0.0.1\n    forward\n}\n",
	} {
		if s, err := Start(func() (string, error) { return corefile, nil }); err == nil {
			_ = s.Stop()
			t.Errorf("started with %q", corefile)
		}
	}
}

func TestPluginsHoldTheCuratedSet(t *testing.T) {
	got := Plugins()
	for _, want := range []string{"bind", "cache", "forward", "errors", "log", "health", "ready", "prometheus", "reload",
		"loop", "loadbalance", "bufsize", "fastcache", "misslimit", "hosts", "rewrite", "template", "timeouts", "debug", "whoami"} {
		if !slices.Contains(got, want) {
			t.Errorf("plugin %s not compiled in: %v", want, got)
		}
	}
	for _, absent := range []string{"kubernetes", "etcd", "route53", "file"} {
		if slices.Contains(got, absent) {
			t.Errorf("plugin %s compiled in; the node cache does not need it", absent)
		}
	}
}
