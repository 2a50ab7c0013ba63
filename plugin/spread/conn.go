package spread

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/node-local-coredns/node-local-coredns/internal/coro"
)

// An upstream's connections: TCP, one query at a time each (kube-dns's
// CoreDNS answers a connection's queries one after another, so a slow
// answer would hold up every query behind it), kept while they are used.
// They are CoreDNS's proxy package's connections with what the plugin
// needs and the package does not give: the query is packed once for every
// attempt, and a wait for an answer can be cut short by another goroutine,
// so that a query's first attempt runs in the query's own goroutine until
// its hedge limit (see exchange).

// errCachedClosed is a pooled connection the upstream had closed: the
// query is sent again on another, and the upstream is not blamed.
var errCachedClosed = errors.New("pooled connection closed by the upstream")

// dialTimeout bounds a new connection's handshake, as the proxy package's
// default does.
const dialTimeout = 2 * time.Second

// readBuffer is what a connection reads at once: an answer of up to this
// size (with its length) costs one read.
const readBuffer = 2048

// pool is an upstream's idle connections, the most recently used last.
type pool struct {
	addr   string
	expire time.Duration
	mu     sync.Mutex
	idle   []*upConn
	closed bool
}

// upConn is one TCP connection to an upstream.
type upConn struct {
	c    net.Conn
	r    *bufio.Reader
	used time.Time

	// A query sent by a coroutine (package coro) parks until the answer
	// arrives: the connection's waiter, a goroutine started at the first
	// such query, waits for the connection to be readable and resumes the
	// coroutine armed, so that the answer wakes one thread, the waiter's,
	// and the goroutine that read the query reads on.
	raw       syscall.RawConn
	armed     chan *coro.Co
	done      chan struct{}
	closeOnce sync.Once
	waiting   bool // the waiter runs
}

func newUpConn(nc net.Conn) *upConn {
	c := &upConn{c: nc, r: bufio.NewReaderSize(nc, readBuffer), armed: make(chan *coro.Co, 1), done: make(chan struct{})}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c
}

// close closes the connection, and ends its waiter.
func (c *upConn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.c.Close()
	})
}

// parks reports whether a coroutine's query on c parks until the answer:
// not when c has no waiter to resume it, nor when the answer (or more) is
// already read.
func (c *upConn) parks() bool { return c.raw != nil && c.r.Buffered() == 0 }

// Arm implements coro.Waiter: co, which sent a query on c, is resumed by
// c's waiter once c is readable (or its read deadline passes, or c is
// closed).
func (c *upConn) Arm(co *coro.Co) {
	if !c.waiting {
		c.waiting = true
		go c.wait()
	}
	c.armed <- co
}

// wait is c's waiter. It waits for c to be readable before it looks for a
// coroutine to resume (one is armed just after its query is sent, before
// any answer can be read), so that the answer's arrival is the one wake-up.
// It never reads: the coroutine does, in the waiter's goroutine.
func (c *upConn) wait() {
	for {
		err := c.raw.Read(c.readable)
		select {
		case co := <-c.armed:
			co.Resume()
			continue
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		// Readable, a read deadline passed or the peer closed c with no
		// query waiting: one is armed only once sent.
		select {
		case co := <-c.armed:
			co.Resume()
		case <-c.done:
			return
		}
	}
}

// readable is c's waiter's test: whether c has something to read (or an
// error to report). Called again once the poller saw c readable, it only
// confirms.
func (c *upConn) readable(fd uintptr) bool {
	var b [1]byte
	_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno != syscall.EAGAIN
}

// get returns an idle connection not unused for longer than expire (the
// most recently used: the others age out), or a new one, dialled within
// timeout (by co, if not nil, detached first); cached reports which.
func (p *pool) get(now time.Time, timeout time.Duration, co *coro.Co) (c *upConn, cached bool, err error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		c = p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if now.Sub(c.used) <= p.expire {
			p.mu.Unlock()
			return c, true, nil
		}
		c.close()
	}
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, false, errors.New("upstream stopped")
	}
	if co != nil {
		co.Detach()
	}
	nc, err := net.DialTimeout("tcp", p.addr, timeout)
	if err != nil {
		return nil, false, err
	}
	return newUpConn(nc), false, nil
}

// put gives c back, used at now, and closes the connections that have been
// idle for longer than expire (the oldest, first in the list).
func (p *pool) put(c *upConn, now time.Time) {
	c.used = now
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.close()
		return
	}
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].used) > p.expire {
		p.idle[n].close()
		n++
	}
	if n > 0 {
		p.idle = append(p.idle[:0], p.idle[n:]...)
	}
	p.idle = append(p.idle, c)
}

// close closes the idle connections; those in use are closed when given
// back.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.close()
	}
	p.idle = nil
}

// packed is a query packed once for all its attempts: the TCP length and
// the message, with an ID of its own (the client's is put back in the
// answer).
type packed struct {
	wire   []byte
	id     uint16
	origin uint16
}

// pack packs r for the upstream with a new ID, leaving r as it was. The
// ID need not be unpredictable (dns.Id draws from a cryptographic source:
// 2 % of a miss's CPU in a profile of the bench's misses): over TCP, an
// answer from off the path cannot be slipped into the connection, whatever
// its ID, which only tells a connection's answers apart.
func pack(r *dns.Msg) (packed, error) {
	q := packed{id: uint16(rand.Uint32()), origin: r.Id} // #nosec G404 G115 -- see above
	r.Id = q.id
	buf := make([]byte, 2+r.Len()+1)
	wire, err := r.PackBuffer(buf[2:])
	r.Id = q.origin
	if err != nil {
		return q, err
	}
	if len(wire) > dns.MaxMsgSize {
		return q, dns.ErrBuf
	}
	if &wire[0] == &buf[2] {
		buf = buf[:2+len(wire)]
	} else { // PackBuffer needed more room
		buf = append(buf[:2], wire...)
	}
	binary.BigEndian.PutUint16(buf, uint16(len(wire))) // #nosec G115 -- at most MaxMsgSize
	q.wire = buf
	return q, nil
}

// send writes q on c. A TCP connection's send buffer holds a query, so
// the write does not wait: no deadline is set for it.
func (c *upConn) send(q packed) error {
	_, err := c.c.Write(q.wire)
	return err
}

// recv reads the answer to q until deadline, dropping answers to other IDs
// (a query abandoned on this connection cannot have left one: a connection
// with an abandoned query is closed). started reports whether any of the
// answer had arrived, for a timeout: a connection that timed out before
// any byte can go on waiting.
func (c *upConn) recv(q packed, deadline time.Time) (ret *dns.Msg, started bool, err error) {
	if err := c.c.SetReadDeadline(deadline); err != nil {
		return nil, false, err
	}
	for {
		hdr, err := c.r.Peek(2)
		if err != nil {
			return nil, len(hdr) > 0, err
		}
		n := int(binary.BigEndian.Uint16(hdr))
		if n < 12 {
			return nil, true, dns.ErrShortRead
		}
		var body []byte
		if b, err := c.r.Peek(2 + n); err == nil {
			body = b[2:]
		} else if errors.Is(err, bufio.ErrBufferFull) {
			body = make([]byte, n)
			if _, err := c.r.Discard(2); err != nil {
				return nil, true, err
			}
			if _, err := io.ReadFull(c.r, body); err != nil {
				return nil, true, err
			}
			n = -2 // read already
		} else {
			return nil, true, err
		}
		m := new(dns.Msg)
		uerr := m.Unpack(body)
		if n >= 0 {
			if _, err := c.r.Discard(2 + n); err != nil {
				return nil, true, err
			}
		}
		if uerr != nil {
			return nil, true, uerr
		}
		if m.Id == q.id {
			m.Id = q.origin
			return m, true, nil
		}
	}
}

// timedOut reports whether err is a read deadline passing.
func timedOut(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// The proxy package's histogram of the time each try took and its
// connection cache counters, as CoreDNS's proxies report them: spread's
// upstream connections are theirs (proxy_name "spread").
var (
	requestDuration = existing(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace:                   plugin.Namespace,
		Subsystem:                   "proxy",
		Name:                        "request_duration_seconds",
		Buckets:                     plugin.TimeBuckets,
		NativeHistogramBucketFactor: plugin.NativeHistogramBucketFactor,
		Help:                        "Histogram of the time each request took.",
	}, []string{"proxy_name", "to", "rcode"}))
	connCacheHits = existing(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "proxy",
		Name:      "conn_cache_hits_total",
		Help:      "Counter of connection cache hits per upstream and protocol.",
	}, []string{"proxy_name", "to", "proto"}))
	connCacheMisses = existing(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "proxy",
		Name:      "conn_cache_misses_total",
		Help:      "Counter of connection cache misses per upstream and protocol.",
	}, []string{"proxy_name", "to", "proto"}))
)

// existing registers c, or returns the collector of the same name the
// proxy package registered first.
func existing[C prometheus.Collector](c C) C {
	err := prometheus.DefaultRegisterer.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if e, ok := are.ExistingCollector.(C); ok {
			return e
		}
	}
	return c
}
