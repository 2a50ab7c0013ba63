package fastcache

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// conn is the fast path's own UDP socket on a server's address, in the
// address's SO_REUSEPORT group. It is a net.PacketConn for miekg/dns's
// server, which reads the queries the fast path passes on: ReadFrom reads
// what is queued, answers the cache hits in place, sends the answers
// (sendto, or sendmmsg for several), and returns the first packet it does
// not answer.
//
// It waits for packets in one of two ways, both with raw system calls that
// allocate nothing:
//
//   - Blocking (when GOMAXPROCS is 2 or more, as Go sets it in any pod
//     limited to fewer than 2 CPUs): the reading goroutine sleeps in the
//     kernel, in recvfrom (recvmmsg with MSG_WAITFORONE once packets
//     queue), and the kernel wakes that thread alone when a query comes:
//     one system call to receive and one to answer, and no work for Go's
//     scheduler. The socket is not in Go's
//     network poller; SO_RCVTIMEO wakes the reader every 100 ms while idle,
//     for the read deadline and the metrics.
//   - In Go's network poller (GOMAXPROCS 1), as net.UDPConn does, with
//     non-blocking recvfrom, or recvmmsg from the second read in a row that
//     finds a packet. A goroutine blocked in a system call there would make
//     Go's system monitor take the only processor back every 20 µs, the
//     largest cost per query of a Go server at moderate rates.
type conn struct {
	// file holds the socket in Go's network poller; rc reads and writes
	// it, waiting in the poller when it would block.
	file   *os.File
	rc     syscall.RawConn
	fd     int
	local  *net.UDPAddr
	l      *listener
	closed atomic.Bool
	// blocking is the way the reader waits (see conn). In that mode the
	// read deadline is kept here, in Unix nanoseconds (0: none), and
	// stopped marks a deadline set in the past, which shut the socket's
	// reading down to wake the reader.
	blocking bool
	deadline atomic.Int64
	stopped  atomic.Bool
	// yielded is when the blocking reader last yielded its processor.
	yielded time.Time

	// The reader's state: one goroutine reads.
	rx   batch
	next int // next packet of rx to look at
	tx   batch
	key  [maxKey]byte
	q    query
	// at is when the packets of rx were read.
	at time.Time
	// queued counts the reads in a row that found a packet since the
	// socket was last empty (a blocking reader sets 2 when packets
	// queue): from two on, the reads take batches.
	queued int
	// The callbacks given to the socket's RawConn and their results.
	readFn, writeFn func(uintptr) bool
	readFromFn      func(uintptr)
	// ReadFrom's arguments and results, for a blocking reader's readFromFn.
	rb    []byte
	rn    int
	raddr net.Addr
	rerr  error
	errno syscall.Errno
	sent  int
	// counts are the answers not yet in the metrics.
	counts pending
}

// batchSize is how many packets one recvmmsg or sendmmsg moves at most.
const batchSize = 32

// rxBuf is the size of a receive buffer: larger queries are cut, as the
// kernel cuts them for miekg/dns's 512-byte reads.
const rxBuf = 4096

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

type batch struct {
	hdrs  [batchSize]mmsghdr
	iovs  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][]byte
	n     int
}

func (b *batch) init(size int) {
	for i := range b.hdrs {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
		b.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
	}
}

// idleWake is how long a blocking reader sleeps at most without a packet.
const idleWake = 100 * time.Millisecond

// queuedGap: a blocking read that returns sooner than this after the last
// found a packet already queued.
const queuedGap = 20 * time.Microsecond

// yieldEvery is how often a blocking reader yields its processor. A
// goroutine that Go's system monitor sees running for 10 ms without a
// reschedule is preempted, and, sitting in a system call, loses its
// processor at every look of the monitor, which then looks every 20 µs: a
// reader that never parks must yield before.
const yieldEvery = 5 * time.Millisecond

// listen opens the fast path's socket on addr, blocking when GOMAXPROCS is
// 2 or more (see conn).
func listen(addr netip.AddrPort) (*conn, error) {
	return listenMode(addr, runtime.GOMAXPROCS(0) >= 2)
}

// rcvBuf is the fast path socket's receive buffer: 4 MiB holds some 5,000
// queries (the kernel counts about 800 bytes per small datagram), a quarter
// of a second at 20,000 a second.
const rcvBuf = 4 << 20

func listenMode(addr netip.AddrPort, blocking bool) (*conn, error) {
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	typ := unix.SOCK_DGRAM | unix.SOCK_CLOEXEC
	if !blocking {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(family, typ, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("opening UDP socket for %s: %w", addr, err)
	}
	c := &conn{fd: fd, local: net.UDPAddrFromAddrPort(addr), blocking: blocking}
	wake := unix.NsecToTimeval(int64(idleWake))
	for _, o := range []struct {
		name string
		err  error
	}{
		{"SO_REUSEADDR", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)},
		{"SO_REUSEPORT", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)},
		// The idle wake-up of a blocking reader; a non-blocking socket
		// never waits in the kernel, and ignores it.
		{"SO_RCVTIMEO", unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &wake)},
	} {
		if o.err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("setting %s on %s: %w", o.name, addr, o.err)
		}
	}
	// A receive buffer for bursts: every query of the node's pods queues
	// here while the reader is busy, and a drop is a 5 s stall for a glibc
	// client. SO_RCVBUFFORCE passes net.core.rmem_max with NET_ADMIN (the
	// agent has it); without, SO_RCVBUF gets what rmem_max allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("setting IPV6_V6ONLY on %s: %w", addr, err)
		}
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding %s: %w", addr, err)
	}
	// A blocking socket stays out of Go's poller (os.NewFile sees it is
	// blocking); its RawConn still keeps the descriptor open while a
	// system call uses it.
	c.file = os.NewFile(uintptr(fd), "fastcache "+addr.String())
	if c.rc, err = c.file.SyscallConn(); err != nil {
		c.file.Close()
		return nil, fmt.Errorf("polling %s: %w", addr, err)
	}
	c.rx.init(rxBuf)
	c.tx.init(maxFastAnswer)
	c.readFn, c.writeFn = c.read, c.write
	c.readFromFn = func(uintptr) { c.rn, c.raddr, c.rerr = c.readFrom(c.rb) }
	return c, nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

// peer reads the address of packet i of b.
func (b *batch) peer(i int) (netip.AddrPort, bool) {
	rsa := &b.names[i]
	switch rsa.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := uint16(sa.Port>>8 | sa.Port<<8)
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), true
	case unix.AF_INET6:
		port := uint16(rsa.Port>>8 | rsa.Port<<8)
		return netip.AddrPortFrom(netip.AddrFrom16(rsa.Addr), port), true
	}
	return netip.AddrPort{}, false
}

// ReadFrom implements net.PacketConn: it returns the next packet the fast
// path does not answer itself.
func (c *conn) ReadFrom(b []byte) (int, net.Addr, error) {
	if !c.blocking {
		return c.readFrom(b)
	}
	// A blocking reader holds the socket open for the whole read, so that
	// its system calls need not take a reference each (Close shuts the
	// socket's reading down, which wakes it).
	c.rb = b
	if err := c.rc.Control(c.readFromFn); err != nil {
		return 0, nil, net.ErrClosed
	}
	n, addr, err := c.rn, c.raddr, c.rerr
	c.rb, c.raddr, c.rerr = nil, nil, nil
	return n, addr, err
}

// readFrom is ReadFrom's loop.
func (c *conn) readFrom(b []byte) (int, net.Addr, error) {
	for {
		for c.next < c.rx.n {
			i := c.next
			c.next++
			h := &c.rx.hdrs[i]
			p := c.rx.bufs[i][:min(int(h.n), rxBuf)]
			served, f := false, (*FastCache)(nil)
			if h.hdr.Flags&unix.MSG_TRUNC == 0 {
				served, f = c.serve(i, p)
			}
			if served {
				continue
			}
			peer, ok := c.rx.peer(i)
			if !ok {
				continue
			}
			lim := c.l.limit.Load()
			if lim != nil && !lim.allow(peer.Addr().Unmap(), c.at.UnixNano()) {
				limitedDrops.Inc()
				continue
			}
			if f != nil && c.l.handOff(p, peer, lim != nil, c.l.inlines(&c.q, f)) {
				continue
			}
			if err := c.flush(); err != nil {
				return 0, nil, err
			}
			return copy(b, p), net.UDPAddrFromAddrPort(peer), nil
		}
		if err := c.flush(); err != nil {
			return 0, nil, err
		}
		if c.counts.due(c.at) {
			c.counts.flush()
		}
		if err := c.receive(); err != nil {
			// The read deadline (every 2 s while idle) or Close.
			c.counts.flush()
			return 0, nil, err
		}
	}
}

// serve answers packet i from the cache, queueing the answer, and reports
// whether it did, and, if not, the fastcache whose store it looked the
// query up in (a miss; nil when the fast path did not understand it).
func (c *conn) serve(i int, p []byte) (served bool, missed *FastCache) {
	t := &c.tx
	out := t.bufs[t.n][:cap(t.bufs[t.n])]
	resp, f, ok := c.l.answer(p, c.key[:], out, &c.q, c.at)
	if !ok {
		return false, f
	}
	t.iovs[t.n].SetLen(len(resp))
	t.hdrs[t.n].hdr.Name = (*byte)(unsafe.Pointer(&c.rx.names[i]))
	t.hdrs[t.n].hdr.Namelen = c.rx.hdrs[i].hdr.Namelen
	t.n++
	c.counts.hit(f.m, c.l.addr, &c.q, c.rx.names[i].Family == unix.AF_INET6, len(p), len(resp), int(resp[3]&0x0f), c.at)
	if t.n == batchSize {
		if err := c.flush(); err != nil {
			return true, nil // counted as answered; the loss is the kernel's
		}
	}
	return true, nil
}

// A batch of received packets is read exactly once. Its states:
//
//   - empty (c.rx.n == 0): receive and receiveBlocking empty it before they
//     wait, and leave it empty on every return but a successful read;
//   - filled (c.rx.n > 0, c.next == 0): by a successful read alone;
//   - consumed (c.next counts up to c.rx.n): by readFrom, one packet at a
//     time, each answered or handed to miekg/dns.
//
// So a return without packets (the read deadline, which miekg/dns treats as
// temporary and follows with another read, or Close) can never leave the
// last batch to be read again.
func (c *conn) emptyBatch() { c.next, c.rx.n, c.errno = 0, 0, 0 }

// receive waits until at least one packet is there, then takes what is
// queued, up to a batch.
func (c *conn) receive() error {
	if c.blocking {
		return c.receiveBlocking()
	}
	c.emptyBatch()
	if err := c.rc.Read(c.readFn); err != nil {
		c.emptyBatch()
		if c.closed.Load() {
			return net.ErrClosed
		}
		return err
	}
	if c.errno != 0 {
		err := fmt.Errorf("reading from %s: %w", c.local, c.errno)
		c.emptyBatch()
		return err
	}
	c.at = time.Now()
	return nil
}

// receiveBlocking is receive for a blocking socket, within ReadFrom's hold
// on it: it sleeps in the kernel until a packet comes, waking every
// idleWake to flush the metrics and to check the read deadline.
func (c *conn) receiveBlocking() error {
	for {
		c.emptyBatch()
		if d := c.deadline.Load(); d != 0 && c.at.UnixNano() >= d || c.stopped.Load() {
			return os.ErrDeadlineExceeded
		}
		if c.at.Sub(c.yielded) >= yieldEvery {
			runtime.Gosched()
			c.yielded = c.at
		}
		c.recvBlocking(uintptr(c.fd))
		switch {
		case c.closed.Load():
			c.emptyBatch()
			return net.ErrClosed
		case c.stopped.Load():
			// The packets read after the shutdown are empty.
			c.emptyBatch()
			return os.ErrDeadlineExceeded
		}
		switch c.errno {
		case 0:
			now := time.Now()
			// A read that returned within queuedGap of the last one
			// found a packet waiting: the next takes a batch. A batch of
			// one goes back to single reads.
			if c.rx.n > 1 || c.rx.n == 1 && c.queued < 2 && now.Sub(c.at) < queuedGap {
				c.queued = 2
			} else {
				c.queued = 0
			}
			c.at = now
			return nil
		case unix.EAGAIN, unix.EINTR:
			// SO_RCVTIMEO: the socket was idle.
			c.at = time.Now()
			c.counts.flush()
		default:
			err := fmt.Errorf("reading from %s: %w", c.local, c.errno)
			c.emptyBatch()
			return err
		}
	}
}

// recvBlocking is receiveBlocking's system call: it sleeps until
// a packet comes, then takes it (recvfrom) or, when packets queue, what is
// queued up to a batch (recvmmsg). It goes through Go's system-call entry,
// which lets the scheduler run other goroutines on the processor meanwhile.
func (c *conn) recvBlocking(fd uintptr) {
	if c.queued < 2 {
		h := &c.rx.hdrs[0]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.Flags = 0
		n, _, errno := syscall.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.rx.bufs[0][0])), rxBuf,
			unix.MSG_TRUNC, uintptr(unsafe.Pointer(&c.rx.names[0])), uintptr(unsafe.Pointer(&h.hdr.Namelen)))
		if errno != 0 {
			c.errno = errno
			return
		}
		c.rx.setSingle(n)
		return
	}
	for i := range c.rx.hdrs {
		c.rx.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		c.rx.hdrs[i].hdr.Flags = 0
	}
	n, _, errno := syscall.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rx.hdrs[0])), batchSize, unix.MSG_WAITFORONE, 0, 0)
	if errno != 0 {
		c.errno = errno
		return
	}
	c.rx.n = int(n)
}

// setSingle records a packet of n bytes read by recvfrom with MSG_TRUNC
// (n is the packet's length, over the buffer when it was cut).
func (b *batch) setSingle(n uintptr) {
	h := &b.hdrs[0]
	h.n = uint32(min(n, rxBuf))
	if n > rxBuf {
		h.hdr.Flags = unix.MSG_TRUNC
	}
	b.n = 1
}

// read is receive's non-blocking attempt (c.readFn, a method value made
// once: a closure would be allocated at every read). It reports false when
// the socket is empty, for the poller to wait.
func (c *conn) read(fd uintptr) bool {
	if c.queued < 2 {
		// Packets come one at a time: recvfrom costs less than recvmmsg,
		// which copies message headers and tries for a second packet.
		h := &c.rx.hdrs[0]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.Flags = 0
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.rx.bufs[0][0])), rxBuf,
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, uintptr(unsafe.Pointer(&c.rx.names[0])), uintptr(unsafe.Pointer(&h.hdr.Namelen)))
		switch errno {
		case unix.EAGAIN, unix.EINTR:
			c.queued = 0
			return false
		case 0:
			c.rx.setSingle(n)
			c.queued++
		default:
			c.errno = errno
		}
		return true
	}
	for i := range c.rx.hdrs {
		c.rx.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		c.rx.hdrs[i].hdr.Flags = 0
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rx.hdrs[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case unix.EAGAIN, unix.EINTR:
		c.queued = 0
		return false
	case 0:
		c.rx.n = int(n)
		if n == 1 {
			c.queued = 0
		}
	default:
		c.errno = errno
	}
	return true
}

// flush sends the queued answers.
func (c *conn) flush() error {
	if c.tx.n == 0 {
		return nil
	}
	c.sent = 0
	var err error
	if c.blocking {
		c.write(uintptr(c.fd)) // within ReadFrom's hold on the socket
	} else {
		err = c.rc.Write(c.writeFn)
	}
	c.tx.n = 0
	if err != nil && c.closed.Load() {
		return net.ErrClosed
	}
	return err
}

// write is flush's attempt (c.writeFn in Go's poller; called directly,
// within ReadFrom's hold on the socket, for a blocking socket). Sends do
// not wait; when the socket's buffer is full, a blocking socket waits for
// room in a blocking send, through Go's system-call entry (which lets the
// scheduler go on), and a socket in the poller returns false for the
// poller to wait.
func (c *conn) write(fd uintptr) bool {
	t := &c.tx
	call, flags := unix.RawSyscall6, uintptr(unix.MSG_DONTWAIT)
	for c.sent < t.n {
		var (
			n     uintptr
			errno syscall.Errno
		)
		if t.n-c.sent == 1 {
			h := &t.hdrs[c.sent].hdr
			_, _, errno = call(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(t.iovs[c.sent].Base)), uintptr(t.iovs[c.sent].Len),
				flags, uintptr(unsafe.Pointer(h.Name)), uintptr(h.Namelen))
			n = 1
		} else {
			n, _, errno = call(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&t.hdrs[c.sent])), uintptr(t.n-c.sent), flags, 0, 0)
		}
		switch errno {
		case 0:
			c.sent += int(n)
		case unix.EAGAIN:
			if !c.blocking {
				return false
			}
			call, flags = syscall.Syscall6, 0
		case unix.EINTR:
		default:
			// An answer the kernel refuses (an unreachable client) is
			// dropped, as it would be with sendmsg.
			c.sent++
		}
	}
	return true
}

// WriteTo implements net.PacketConn: the plugin chain's answers.
func (c *conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("writing to %v: not a UDP address", addr)
	}
	ap := ua.AddrPort()
	if c.local.IP.To4() != nil {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	sa := sockaddr(ap)
	var serr error
	send := func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT, sa)
		if serr == unix.EAGAIN && c.blocking {
			serr = unix.Sendto(int(fd), b, 0, sa)
		}
		return serr != unix.EAGAIN
	}
	var err error
	if c.blocking {
		err = c.rc.Control(func(fd uintptr) { send(fd) })
	} else {
		err = c.rc.Write(send)
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("writing to %s: %w", ap, err)
	}
	return len(b), nil
}

// Close implements net.PacketConn.
func (c *conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.blocking {
		// Wake the reader; the descriptor is closed once it is out of
		// its system call.
		_ = unix.Shutdown(c.fd, unix.SHUT_RD)
	}
	return c.file.Close()
}

// LocalAddr implements net.PacketConn.
func (c *conn) LocalAddr() net.Addr { return c.local }

// SetDeadline implements net.PacketConn.
func (c *conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn. miekg/dns sets a deadline 2 s
// ahead at each read, and one in the past to stop its reader. A blocking
// socket keeps the deadline for its reader to check as it wakes; a
// deadline in the past shuts its reading down, which wakes the reader at
// once, and for good: stopping is the one use miekg/dns makes of it.
func (c *conn) SetReadDeadline(t time.Time) error {
	if !c.blocking {
		return c.file.SetReadDeadline(t)
	}
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	c.deadline.Store(d)
	if d != 0 && !t.After(time.Now()) && !c.stopped.Swap(true) {
		// Unconnected, the socket answers ENOTCONN, yet it is shut down.
		if err := unix.Shutdown(c.fd, unix.SHUT_RD); err != nil && err != unix.ENOTCONN {
			return fmt.Errorf("stopping reads on %s: %w", c.local, err)
		}
	}
	return nil
}

// SetWriteDeadline implements net.PacketConn. A blocking socket's sends
// wait only for room in its buffer, as a blocking socket's do, and have no
// deadline.
func (c *conn) SetWriteDeadline(t time.Time) error {
	if c.blocking {
		return nil
	}
	return c.file.SetWriteDeadline(t)
}

// detachOthers detaches every other unconnected UDP socket of this process
// bound to addr (CoreDNS's own), by connecting it to the discard port of
// loopback: the kernel then delivers the address's queries to the fast
// path's socket alone. CoreDNS's server keeps running on its socket and
// answers nothing but what was already queued.
func detachOthers(addr netip.AddrPort, keep int) error {
	return eachOwnSocket(addr, keep, func(fd int) error {
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			return nil
		}
		if _, err := unix.Getpeername(fd); err == nil {
			return nil
		}
		var peer unix.Sockaddr = &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}
		if addr.Addr().Is6() {
			peer = &unix.SockaddrInet6{Port: 9, Addr: netip.IPv6Loopback().As16()}
		}
		if err := unix.Connect(fd, peer); err != nil {
			return fmt.Errorf("detaching socket %d on %s: %w", fd, addr, err)
		}
		return nil
	})
}

// eachOwnSocket calls f with every descriptor of this process, keep aside,
// that is a socket bound to addr, and returns f's errors joined.
func eachOwnSocket(addr netip.AddrPort, keep int, f func(fd int) error) error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("listing own sockets: %w", err)
	}
	var errs []error
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil || fd == keep {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil || !sameAddr(sa, addr) {
			continue
		}
		if err := f(fd); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sameAddr(sa unix.Sockaddr, a netip.AddrPort) bool {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Addr().Is4() && sa.Port == int(a.Port()) && sa.Addr == a.Addr().As4()
	case *unix.SockaddrInet6:
		return a.Addr().Is6() && sa.Port == int(a.Port()) && sa.Addr == a.Addr().As16()
	}
	return false
}
