package fastcache

import (
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// CoreDNS accepts every TCP connection and reads each message into a
// buffer of the length it announces (up to 64 KiB) before any of it has
// arrived, so that a pod opening connections that announce 65,535 bytes
// and hold them costs 64 KiB each until the read timeout, with no bound on
// their number. Where the fast path serves an address it takes TCP there
// too: its own listener, in the address's SO_REUSEPORT group, caps the
// connections open at once, in all and per client address, and reads a
// message as it arrives; CoreDNS's own listening socket there is replaced
// by one that receives nothing (takeTCP), so that every connection comes
// to the capped listener. Each query is served by CoreDNS's server, as it
// would have been.
const (
	// tcpConnCost bounds what an open connection may hold: a message of up
	// to 64 KiB read as it arrives, the goroutine serving it, miekg/dns's
	// state.
	tcpConnCost = 80 << 10
	// defaultTCPConns is the cap without a soft memory limit.
	defaultTCPConns = 1024
	// minTCPConns and perClientShare: one client address may hold an
	// eighth of the connections, at least minPerClient.
	minTCPConns    = 16
	perClientShare = 8
	minPerClient   = 4
)

// tcpCaps is how many connections may be open at once, in all and from
// one client address, for Go's soft memory limit soft: an eighth of it at
// tcpConnCost each (174 and 21 at the DaemonSet's 128 MiB).
func tcpCaps(soft int64) (total, perClient int) {
	total = defaultTCPConns
	if soft > 0 && soft != math.MaxInt64 {
		total = int(max(soft/8/tcpConnCost, minTCPConns))
	}
	return total, max(total/perClientShare, minPerClient)
}

// capListener accepts connections up to its caps and closes the rest at
// once: a client past its share loses only its own new connections.
type capListener struct {
	net.Listener
	total, perClient int
	openGauge        prometheus.Gauge
	refusedTotal     prometheus.Counter
	refusedClient    prometheus.Counter

	mu      sync.Mutex
	open    int
	clients map[netip.Addr]int
}

func newCapListener(l net.Listener, server string, total, perClient int) *capListener {
	registerMetrics.Do(registerAll)
	return &capListener{
		Listener: l, total: total, perClient: perClient, clients: map[netip.Addr]int{},
		openGauge:     tcpOpen.WithLabelValues(server),
		refusedTotal:  tcpRefused.WithLabelValues(server, "total"),
		refusedClient: tcpRefused.WithLabelValues(server, "client"),
	}
}

// Accept returns the next connection within the caps.
func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client := remoteAddr(c)
		if refused := l.admit(client); refused != nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset: nothing left behind in TIME_WAIT
			}
			refused.Inc()
			_ = c.Close()
			continue
		}
		return &cappedConn{Conn: c, l: l, client: client}, nil
	}
}

// admit counts a connection from client and returns nil, or the counter
// of the cap it would pass, without counting it.
func (l *capListener) admit(client netip.Addr) prometheus.Counter {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.total:
		return l.refusedTotal
	case l.clients[client] >= l.perClient:
		return l.refusedClient
	}
	l.open++
	l.clients[client]++
	l.openGauge.Set(float64(l.open))
	return nil
}

func (l *capListener) release(client netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.clients[client]--; l.clients[client] <= 0 {
		delete(l.clients, client)
	}
	l.openGauge.Set(float64(l.open))
}

func remoteAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// cappedConn gives its place back when closed.
type cappedConn struct {
	net.Conn
	l      *capListener
	client netip.Addr
	once   sync.Once
}

func (c *cappedConn) Close() error {
	c.once.Do(func() { c.l.release(c.client) })
	return c.Conn.Close()
}

// arrivalReader reads a TCP message into a buffer that grows as its bytes
// arrive (doubling from 512 bytes), never to more than twice what has
// arrived; the rest is miekg/dns's reader.
type arrivalReader struct{ dns.Reader }

// firstChunk is the buffer a message starts with: most queries fit.
const firstChunk = 512

var errEmptyMessage = errors.New("a TCP message of length 0")

func (r arrivalReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n == 0 {
		return nil, errEmptyMessage
	}
	m := make([]byte, 0, min(n, firstChunk))
	for len(m) < n {
		if len(m) == cap(m) {
			m = append(make([]byte, 0, min(2*cap(m), n)), m...)
		}
		k, err := conn.Read(m[len(m):cap(m)])
		m = m[:len(m)+k]
		if err != nil && len(m) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return m, nil
}

// serveTCP starts the fast path's TCP server on l, with the caps from Go's
// soft memory limit and the timeouts of CoreDNS's server s.
func (l *listener) serveTCP(ln net.Listener, s *dnsserver.Server) {
	total, perClient := tcpCaps(debug.SetMemoryLimit(-1))
	l.tcp = l.tcpServer(newCapListener(ln, s.Addr, total, perClient), s)
	log.Infof("%s: TCP: at most %d connections at once, %d per client address", s.Addr, total, perClient)
	go func() {
		// A listening socket shut down (the agent's hand-over to its
		// successor at a stop) fails accept with EINVAL: a stop too.
		if err := l.tcp.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.EINVAL) {
			log.Errorf("%s: fast path's TCP server stopped: %v", s.Addr, err)
		}
	}()
}

// tcpServer is the fast path's TCP server on ln, with s's timeouts.
func (l *listener) tcpServer(ln net.Listener, s *dnsserver.Server) *dns.Server {
	return &dns.Server{
		Listener:       ln,
		Net:            "tcp",
		MaxTCPQueries:  s.MaxTCPQueries,
		ReadTimeout:    s.ReadTimeout,
		WriteTimeout:   s.WriteTimeout,
		IdleTimeout:    func() time.Duration { return l.srv.Load().IdleTimeout },
		DecorateReader: func(r dns.Reader) dns.Reader { return arrivalReader{r} },
		Handler:        dns.HandlerFunc(l.serveTCPQuery),
	}
}

// serveTaken serves c, a connection CoreDNS's listener had queued when the
// fast path took TCP (at most its backlog, outside the caps), as the fast
// path's TCP server serves its own, until it closes.
func (l *listener) serveTaken(c net.Conn) {
	srv := l.tcpServer(&oneConn{c: c, addr: c.LocalAddr()}, l.srv.Load())
	go func() {
		// Its listener fails the second accept: the server returns once
		// it has served c.
		_ = srv.ActivateAndServe()
	}()
}

// oneConn is a listener that accepts c, then nothing.
type oneConn struct {
	mu   sync.Mutex
	c    net.Conn
	addr net.Addr
}

func (o *oneConn) Accept() (net.Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.c
	if c == nil {
		return nil, net.ErrClosed
	}
	o.c = nil
	return c, nil
}

func (o *oneConn) Close() error   { return nil }
func (o *oneConn) Addr() net.Addr { return o.addr }

// serveTCPQuery hands a query over TCP to CoreDNS's server, as CoreDNS's
// own TCP server does: every plugin, misslimit included, sees it.
func (l *listener) serveTCPQuery(w dns.ResponseWriter, r *dns.Msg) {
	l.serve(nil, w, r, false)
}
