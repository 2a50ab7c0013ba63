package server

import (
	"context"
	"net"
	"testing"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// upstreamHandler answers every query with one A record, standing in for
// kube-dns (in process, so that a miss measures the server and the cache,
// not a network).
var upstreamHandler = plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 1)}}
	_ = w.WriteMsg(m)
	return dns.RcodeSuccess, nil
})

// benchServer builds the embedded server's query path for zone "." as the
// built-in Corefile has it (cache in front of the upstream) and returns the
// dnsserver.Server, whose ServeDNS is what a UDP packet reaches.
func benchServer(b *testing.B) *dnsserver.Server {
	b.Helper()
	c := cache.New()
	cfg := &dnsserver.Config{Zone: ".", Port: "53", ListenHosts: []string{"127.0.0.1"}, Transport: "dns"}
	cfg.Plugin = []plugin.Plugin{
		func(next plugin.Handler) plugin.Handler { c.Next = next; return c },
		func(plugin.Handler) plugin.Handler { return upstreamHandler },
	}
	s, err := dnsserver.NewServer("dns://127.0.0.1:53", []*dnsserver.Config{cfg})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkCacheHit is one cache hit through the embedded server's query
// path (mux, cache), without the socket.
func BenchmarkCacheHit(b *testing.B) {
	s := benchServer(b)
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	ctx := context.Background()
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	s.ServeDNS(ctx, rec, m) // fill the cache
	if rec.Msg == nil || len(rec.Msg.Answer) != 1 {
		b.Fatalf("no answer to fill the cache: %v", rec.Msg)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.ServeDNS(ctx, &test.ResponseWriter{}, m)
	}
}

// BenchmarkCacheMiss is one cache miss (a new name each time) answered by
// the in-process upstream through the same path.
func BenchmarkCacheMiss(b *testing.B) {
	s := benchServer(b)
	ctx := context.Background()
	names := make([]string, 1<<16)
	for i := range names {
		names[i] = dns.Fqdn(net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).String() + ".miss.example.org")
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := new(dns.Msg)
		m.SetQuestion(names[i%len(names)], dns.TypeA)
		i++
		s.ServeDNS(ctx, &test.ResponseWriter{}, m)
	}
}
