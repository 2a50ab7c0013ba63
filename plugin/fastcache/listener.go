package fastcache

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/coro"
)

// listener is the fast path on one address: its socket, the fastcache of
// each zone served there, and the CoreDNS server that answers what the fast
// path does not.
type listener struct {
	addr string
	// zones maps a zone's lowercased wire name to the fastcache of its
	// server block; changed under the registry's lock.
	zones map[string]*FastCache
	// routes are the same zones, longest first, for route: replaced whole
	// on change.
	routes atomic.Pointer[[]zoneRoute]
	// limit is misslimit's limiter on this address (the zones here share
	// it), nil without misslimit.
	limit atomic.Pointer[limiter]
	srv   atomic.Pointer[dnsserver.Server]

	conn *conn
	dns  *dns.Server
	// tcp is the fast path's TCP server on the address, with its caps.
	tcp *dns.Server
	// attached is set once CoreDNS started serving the address and the
	// fast path took it (or found it cannot).
	attached bool

	// jobs hands a query the fast path passes on to an idle worker;
	// workers counts them, quit stops them.
	jobs    chan job
	workers atomic.Int32
	quit    chan struct{}
	// coros run the queries the fast path's reader hands on, on its own
	// thread until they wait (see package coro); workers, the rest.
	coros *coro.Pool[job]
	// aside are the zones of the server on the address whose queries do
	// not run as coroutines (see inlines), lowercased wire names.
	aside atomic.Pointer[[]string]
	// handedOff counts the packets the reader handed on itself.
	handedOff atomic.Int64
}

// job is a query the fast path passes on to CoreDNS's server: unpacked by
// miekg/dns (w and r), or, handed on by the fast path's reader, a packet
// and the address it came from.
type job struct {
	w       dns.ResponseWriter
	r       *dns.Msg
	pkt     []byte
	peer    netip.AddrPort
	counted bool
}

// maxWorkers bounds the listener's workers, goroutines that serve the
// queries the fast path passes on one after another. A worker's stack has
// grown to what the plugin chain needs (16-32 KiB); a goroutine per query,
// as miekg/dns starts, begins with a small stack and copies it as it grows,
// several times per query: a tenth of a cache miss's CPU here. Past the
// bound, a query is served in miekg/dns's goroutine, as before.
const maxWorkers = 64

// registry holds the listeners of the process by address. The listeners
// outlive CoreDNS's reloads: a reload registers the new server blocks'
// fastcaches and points the listener at the new server, then the old
// instance's shutdown takes its fastcaches out.
type zoneRoute struct {
	name  string // lowercased wire name
	f     *FastCache
	label string // presentation name, for metrics
}

// publish makes the fast path route by the current zones.
func (l *listener) publish() {
	routes := make([]zoneRoute, 0, len(l.zones))
	for k, f := range l.zones {
		routes = append(routes, zoneRoute{name: k, f: f})
	}
	slices.SortFunc(routes, func(a, b zoneRoute) int { return len(b.name) - len(a.name) })
	l.routes.Store(&routes)
	var lim *limiter
	for _, r := range routes {
		if r.f.limit != nil && r.f.fast.Load() {
			lim = r.f.limit
			break
		}
	}
	l.limit.Store(lim)
}

type registry struct {
	mu sync.Mutex
	m  map[string]*listener
}

var listeners = &registry{m: map[string]*listener{}}

func zoneKey(zone string) string {
	buf := make([]byte, maxName+1)
	n, err := dns.PackDomainName(dns.Fqdn(strings.ToLower(zone)), buf, 0, nil, false)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func newListener(addr string) *listener {
	l := &listener{addr: addr, zones: map[string]*FastCache{}, jobs: make(chan job), quit: make(chan struct{})}
	l.coros = coro.NewPool(l.servePacket, l.addWorker, func() { l.workers.Add(-1) })
	return l
}

// addWorker counts one more worker or coroutine, and reports whether it
// is within maxWorkers.
func (l *listener) addWorker() bool {
	if l.workers.Add(1) <= maxWorkers {
		return true
	}
	l.workers.Add(-1)
	return false
}

func (r *registry) register(addr string, f *FastCache) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.m[addr]
	if l == nil {
		l = newListener(addr)
		r.m[addr] = l
	}
	l.zones[zoneKey(f.zone)] = f
	l.publish()
}

// unregister takes f out of addr's listener and stops the listener when no
// fastcache is left there.
func (r *registry) unregister(addr string, f *FastCache) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.m[addr]
	if l == nil {
		return
	}
	k := zoneKey(f.zone)
	if l.zones[k] != f {
		return // replaced by a reload
	}
	delete(l.zones, k)
	l.publish()
	if len(l.zones) > 0 {
		return
	}
	delete(r.m, addr)
	l.stop()
}

// stop stops miekg/dns's server on the socket, which closes it; and closes
// it anyway, for a server stopped before it started.
func (l *listener) stop() {
	if l.quit != nil {
		close(l.quit)
	}
	if l.coros != nil {
		l.coros.Close()
	}
	if l.dns != nil {
		_ = l.dns.Shutdown()
	}
	if l.tcp != nil {
		_ = l.tcp.Shutdown()
	}
	if l.conn != nil {
		_ = l.conn.Close()
	}
}

// attach is the dnsserver.Config.UDPDecorateWriterFunc of every server
// block with fastcache: CoreDNS calls it as it starts serving UDP on an
// address. It starts the fast path there (once; later calls, after a
// reload, point it at the new server) and decorates nothing.
func attach(s *dnsserver.Server) dns.DecorateWriter {
	listeners.mu.Lock()
	defer listeners.mu.Unlock()
	l := listeners.m[s.Addr]
	if l == nil {
		return nil
	}
	l.srv.Store(s)
	l.setAside(s)
	if l.conn != nil {
		return nil
	}
	defer func() { l.attached = true }()
	ap, err := netip.ParseAddrPort(strings.TrimPrefix(s.Addr, "dns://"))
	if err != nil || ap.Addr().IsUnspecified() {
		// A wildcard address needs the destination of each query to answer
		// from it; the fast path serves addresses of their own (bind).
		log.Infof("%s: fast path off: it needs a server block bound to an address (bind)", s.Addr)
		return nil
	}
	c, err := listen(ap)
	if err != nil {
		log.Errorf("%s: fast path off: %v", s.Addr, err)
		return nil
	}
	c.l = l
	l.conn = c
	l.dns = &dns.Server{PacketConn: c, Net: "udp", Handler: dns.HandlerFunc(l.serveDNS)}
	go func() {
		if err := l.dns.ActivateAndServe(); err != nil && !c.closed.Load() {
			log.Errorf("%s: fast path stopped: %v", s.Addr, err)
		}
	}()
	if err := detachOthers(ap, c.fd); err != nil {
		log.Warningf("%s: %v; CoreDNS's socket shares the queries with the fast path", s.Addr, err)
	}
	ln, fd, err := listenTCP(ap)
	if err != nil {
		log.Errorf("%s: TCP left to CoreDNS, without caps on connections: %v", s.Addr, err)
		return nil
	}
	l.serveTCP(ln, s)
	if err := takeTCP(ap, fd, l.serveTaken); err != nil {
		log.Warningf("%s: %v; CoreDNS's listener shares the TCP connections with the fast path's", s.Addr, err)
	}
	return nil
}

// serveDNS hands a query the fast path did not answer to CoreDNS's server,
// as CoreDNS's own UDP server does.
func (l *listener) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	// miekg/dns has already given the packet's buffer back (the message
	// holds no part of it) and does nothing with w once this returns: a
	// worker may answer after it.
	counted := l.limit.Load() != nil
	if !l.dispatch(job{w: w, r: r, counted: counted}) {
		l.serve(nil, w, r, counted)
	}
}

// dispatch gives j to an idle worker, or to a new one while there are
// fewer than maxWorkers, and reports whether it did.
func (l *listener) dispatch(j job) bool {
	select {
	case l.jobs <- j:
		return true
	default:
	}
	if l.addWorker() {
		go l.work(j)
		return true
	}
	return false
}

// setAside records the zones of s whose queries the reader does not run
// as coroutines: a query goes on in the reader only when CoreDNS's server
// hands it to the one configuration of its zone, a block whose fastcache
// has only spread after it (FastCache.inline). Without s's zones (CoreDNS
// keeps them unexported), none runs as a coroutine.
func (l *listener) setAside(s *dnsserver.Server) {
	zones, ok := serverZones(s)
	if !ok {
		l.aside.Store(nil)
		return
	}
	aside := []string{}
	for zone, cfgs := range zones {
		f := l.zones[zoneKey(zone)]
		if f != nil && len(cfgs) == 1 && cfgs[0] == f.cfg && f.inline {
			continue
		}
		aside = append(aside, zoneKey(zone))
	}
	l.aside.Store(&aside)
}

// serverZones returns the configurations of s by zone, as CoreDNS's server
// routes queries to them, and whether it could read them.
func serverZones(s *dnsserver.Server) (map[string][]*dnsserver.Config, bool) {
	v := reflect.ValueOf(s)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return nil, false
	}
	m := v.Elem().FieldByName("zones")
	if !m.IsValid() || m.Kind() != reflect.Map || m.Type().Key().Kind() != reflect.String ||
		m.Type().Elem() != reflect.TypeFor[[]*dnsserver.Config]() {
		return nil, false
	}
	out := make(map[string][]*dnsserver.Config, m.Len())
	for it := m.MapRange(); it.Next(); {
		cfgs := it.Value()
		for i := range cfgs.Len() {
			out[it.Key().String()] = append(out[it.Key().String()], (*dnsserver.Config)(cfgs.Index(i).UnsafePointer()))
		}
	}
	return out, true
}

// inlines reports whether the query parsed into q, routed to f, runs as a
// coroutine of the reader: CoreDNS's server hands it to f's block, and
// that block lets it (setAside). A zone aside takes the name when it is
// f's, or longer.
func (l *listener) inlines(q *query, f *FastCache) bool {
	aside := l.aside.Load()
	if f == nil || !f.inline || aside == nil {
		return false
	}
	name := q.key[:q.nameLen]
	own := len(f.wire)
	for _, z := range *aside {
		o := len(name) - len(z)
		if len(z) >= own && o >= 0 && q.labelAt(o) && string(name[o:]) == z {
			return false
		}
	}
	return true
}

// handOff serves a query the fast path's reader understood but has no
// answer for, packet p from peer: with inline (see inlines) on a
// coroutine, in the reader's goroutine until the query waits (else, or
// with none to spare, on a worker),
// and reports whether it did: miekg/dns would start a goroutine for it,
// whose stack grows as it unpacks the query, only to hand it to a worker.
// p is the reader's buffer: a coroutine unpacks it before it first yields,
// a worker is given a copy.
func (l *listener) handOff(p []byte, peer netip.AddrPort, counted, inline bool) bool {
	j := job{pkt: p, peer: peer, counted: counted}
	if !inline || !l.coros.Start(j) {
		j.pkt = slices.Clone(p)
		if !l.dispatch(j) {
			return false
		}
	}
	l.handedOff.Add(1)
	return true
}

// work serves j, then every job it is handed, until the listener stops.
func (l *listener) work(j job) {
	defer l.workers.Add(-1)
	for {
		if j.pkt != nil {
			l.servePacket(nil, j)
		} else {
			l.serve(nil, j.w, j.r, j.counted)
		}
		select {
		case j = <-l.jobs:
		case <-l.quit:
			return
		}
	}
}

// serve hands a query to CoreDNS's server as its own servers do, marked
// when the fast path's reader already counted it for misslimit, in
// coroutine co if not nil.
func (l *listener) serve(co *coro.Co, w dns.ResponseWriter, r *dns.Msg, counted bool) {
	s := l.srv.Load()
	ctx := context.WithValue(context.Background(), dnsserver.Key{}, s)
	ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
	if counted {
		ctx = context.WithValue(ctx, prefiltered{}, true)
	}
	if co != nil {
		ctx = coro.NewContext(ctx, co)
	}
	s.ServeDNS(ctx, w, r)
}

// servePacket unpacks a packet the reader handed on and serves it as
// miekg/dns's UDP server would (it only hands on queries the fast path
// parsed, which miekg/dns accepts), answering through the fast path's
// socket; in coroutine co if not nil, which unpacks the packet before it
// first yields.
func (l *listener) servePacket(co *coro.Co, j job) {
	w := &packetWriter{c: l.conn, peer: net.UDPAddrFromAddrPort(j.peer)}
	r := new(dns.Msg)
	if err := r.Unpack(j.pkt); err != nil {
		// What miekg/dns answers to a query it accepts but cannot unpack.
		r.SetRcodeFormatError(r)
		r.Zero = false
		r.Ns, r.Answer, r.Extra = nil, nil, nil
		_ = w.WriteMsg(r)
		return
	}
	l.serve(co, w, r, j.counted)
}

// packetWriter is miekg/dns's UDP response writer for a packet the fast
// path's reader handed on: the answer goes out through the fast path's
// socket, from the address the query came to.
type packetWriter struct {
	c    *conn
	peer *net.UDPAddr
}

func (w *packetWriter) LocalAddr() net.Addr  { return w.c.LocalAddr() }
func (w *packetWriter) RemoteAddr() net.Addr { return w.peer }

func (w *packetWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *packetWriter) Write(b []byte) (int, error) { return w.c.WriteTo(b, w.peer) }
func (w *packetWriter) Close() error                { return nil }
func (w *packetWriter) TsigStatus() error           { return nil }
func (w *packetWriter) TsigTimersOnly(bool)         {}
func (w *packetWriter) Hijack()                     {}

// route returns the fastcache of the longest zone that contains the wire
// name, the one CoreDNS's server would hand the query to if that zone's
// server block has fastcache. When a longer zone without fastcache takes the
// name, the fastcache returned has never stored an answer for it, because
// only the queries routed to it fill it.
func (l *listener) route(q *query) *FastCache {
	name := q.key[:q.nameLen]
	for _, r := range *l.routes.Load() {
		o := len(name) - len(r.name)
		if o >= 0 && q.labelAt(o) && string(name[o:]) == r.name {
			return r.f
		}
	}
	return nil
}

// answer writes into out the fast path's answer to packet p, parsing the
// query into q with key as scratch space, and reports whether there is one.
// Without one, the fastcache returned is the one whose store it looked in
// (nil when the fast path did not understand the query or does not serve
// its zone).
func (l *listener) answer(p, key, out []byte, q *query, at time.Time) ([]byte, *FastCache, bool) {
	if !parseQuery(p, key, q) {
		return nil, nil, false
	}
	f := l.route(q)
	if f == nil || !f.fast.Load() {
		return nil, nil, false
	}
	if int(q.udpSize) > f.maxUDP && f.maxUDP > 0 {
		// bufsize: the answer fits the cap and echoes it.
		q.udpSize, q.size = uint16(f.maxUDP), f.maxUDP
	}
	now := int64(at.Sub(f.store.epoch))
	e := f.lookup(q.key, now, 0)
	if e == nil || int(e.respLen) > q.size || int(e.nameLen) != q.nameLen {
		f.m.miss()
		return nil, f, false
	}
	ttl := e.ttlAt(now)
	if ttl == 0 {
		f.m.miss()
		return nil, f, false
	}
	return answer(out, e, p, q, ttl), f, true
}

// Attached waits up to timeout for every address with a fastcache to have
// its fast path started, or found off, and reports whether they all have.
// Until then TCP connections queue on CoreDNS's listener (handed to the
// fast path when it takes the address): the agent waits before it sends
// pods there.
func Attached(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		listeners.mu.Lock()
		all := true
		for _, l := range listeners.m {
			all = all && l.attached
		}
		listeners.mu.Unlock()
		if all {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
