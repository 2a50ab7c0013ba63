package fastcache

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const missLimitName = "misslimit"

// limitedDrops counts the queries misslimit dropped.
var limitedDrops = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: plugin.Namespace,
	Subsystem: pluginName,
	Name:      "misslimit_dropped_total",
	Help:      "The count of queries dropped because their client sent more than misslimit allows past the fast path.",
})

// limiter is a token bucket per client address: rate queries a second,
// burst at once. It holds at most maxClients buckets; past that it starts
// over (a flood from many addresses then gets a fresh burst each, and the
// memory stays bounded).
type limiter struct {
	rate, burst float64
	mu          sync.Mutex
	clients     map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   int64 // nanoseconds
}

const maxClients = 1 << 16

func newLimiter(rate, burst float64) *limiter {
	return &limiter{rate: rate, burst: burst, clients: map[netip.Addr]*bucket{}}
}

// allow reports whether client may send one more query at now
// (nanoseconds), and takes a token if so.
func (l *limiter) allow(client netip.Addr, now int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.clients[client]
	if b == nil {
		if len(l.clients) >= maxClients {
			clear(l.clients)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.clients[client] = b
	}
	if now > b.last {
		b.tokens = min(l.burst, b.tokens+float64(now-b.last)*l.rate/float64(time.Second))
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// MissLimit is the misslimit plugin: it drops the queries of a client that
// sends more than its rate past the cache (misses, and whatever the fast
// path leaves to the chain), so that one pod cannot pass a flood of new
// names on to kube-dns nor take the agent's CPU from the others. Before
// fastcache, it runs in the fast path's reader for UDP, where a dropped
// query costs next to nothing, and in the chain for the rest.
type MissLimit struct {
	Next plugin.Handler
	l    *limiter
}

// prefiltered marks a query the fast path's reader already counted.
type prefiltered struct{}

// Name implements plugin.Handler.
func (m *MissLimit) Name() string { return missLimitName }

// ServeDNS implements plugin.Handler. A dropped query gets no answer.
func (m *MissLimit) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if ctx.Value(prefiltered{}) == nil {
		if a, ok := clientAddr(w.RemoteAddr()); ok && !m.l.allow(a, time.Now().UnixNano()) {
			limitedDrops.Inc()
			return dns.RcodeSuccess, nil // nothing written: dropped
		}
	}
	return plugin.NextOrFailure(missLimitName, m.Next, ctx, w, r)
}

func clientAddr(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), true
	case *net.TCPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// limiters holds one limiter per listen address and limit: the server
// blocks on one address (the cluster domain and "." on the kube-dns
// ClusterIP) share a client's budget, in the chain and in the fast path's
// reader alike, and a reload with the same limit keeps the buckets.
var limiters = struct {
	mu sync.Mutex
	m  map[string]*limiter
}{m: map[string]*limiter{}}

func sharedLimiter(addrs []string, rate, burst float64) *limiter {
	k := fmt.Sprintf("%v %g %g", addrs, rate, burst)
	limiters.mu.Lock()
	defer limiters.mu.Unlock()
	l := limiters.m[k]
	if l == nil {
		l = newLimiter(rate, burst)
		limiters.m[k] = l
	}
	return l
}

// setupMissLimit parses "misslimit RATE [BURST]": RATE queries a second per
// client, BURST (default 2 × RATE) at once.
func setupMissLimit(c *caddy.Controller) error {
	var rate, burst float64
	for c.Next() {
		args := c.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return plugin.Error(missLimitName, c.ArgErr())
		}
		var err error
		if rate, err = strconv.ParseFloat(args[0], 64); err != nil || rate <= 0 {
			return plugin.Error(missLimitName, c.Errf("rate %q is not a positive number", args[0]))
		}
		burst = 2 * rate
		if len(args) == 2 {
			if burst, err = strconv.ParseFloat(args[1], 64); err != nil || burst < 1 {
				return plugin.Error(missLimitName, c.Errf("burst %q is not a number of at least 1", args[1]))
			}
		}
	}
	cfg := dnsserver.GetConfig(c)
	m := &MissLimit{l: sharedLimiter(listenAddrs(cfg), rate, burst)}
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		m.Next = next
		return m
	})
	c.OnStartup(func() error {
		registerMetrics.Do(registerAll)
		return nil
	})
	return nil
}
