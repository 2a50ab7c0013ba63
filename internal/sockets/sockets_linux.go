// Package sockets looks at the DNS sockets bound to the local IPs: whether
// another agent on the node serves them too (a rolling upgrade), and how to
// make this process's sockets stop taking new queries while it answers what
// it has already received.
package sockets

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Socket is one bound socket from /proc/net/{udp,udp6,tcp,tcp6}.
type Socket struct {
	Proto  string // "udp" or "tcp"
	Local  netip.AddrPort
	Remote netip.AddrPort
	State  int
	Inode  uint64
}

// TCP listen and UDP unconnected state in /proc/net (TCP_LISTEN, TCP_CLOSE).
const (
	stateTCPEstablished = 0x01
	stateTCPListen      = 0x0a
	stateUDPIdle        = 0x07
)

// Serving returns the sockets that serve one of addrs: unconnected UDP and
// listening TCP sockets bound to exactly that address and port.
func Serving(addrs []netip.AddrPort) ([]Socket, error) {
	var out []Socket
	for _, f := range []struct{ proto, path string }{
		{"udp", "/proc/net/udp"}, {"udp", "/proc/net/udp6"}, {"tcp", "/proc/net/tcp"}, {"tcp", "/proc/net/tcp6"},
	} {
		socks, err := parseFile(f.proto, f.path)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			want := stateUDPIdle
			if s.Proto == "tcp" {
				want = stateTCPListen
			}
			if s.State != want || s.Remote.Port() != 0 {
				continue
			}
			for _, a := range addrs {
				if s.Local == a {
					out = append(out, s)
				}
			}
		}
	}
	return out, nil
}

// OthersServing reports whether a process other than this one serves any
// of addrs.
func OthersServing(addrs []netip.AddrPort) (bool, error) {
	socks, err := Serving(addrs)
	if err != nil {
		return false, err
	}
	own, err := ownInodes()
	if err != nil {
		return false, err
	}
	for _, s := range socks {
		if _, ok := own[s.Inode]; !ok {
			return true, nil
		}
	}
	return false, nil
}

// Detach makes this process's sockets serving addrs stop taking new
// queries, so that the kernel finds no socket for them (the rules, gated on
// a bound socket, then let them go to kube-dns) or finds a peer agent's:
//   - each unconnected UDP socket is connected to the discard port of
//     loopback: it no longer matches queries from anyone else, while what is
//     already queued is still read and answered;
//   - each TCP listener first gets a socket filter that drops SYNs (no new
//     connection starts on it; a client's SYN is sent again a second later,
//     when the listener is gone), while handshakes already under way can
//     complete; once the server has accepted what is queued (at most
//     acceptWait), it is shut down for reading: it leaves the lookup
//     tables, while the accepted connections go on. Shutting a listener
//     down at once would reset the connections in its accept queue. (The
//     SYNs are dropped only for the moment the queue takes to empty:
//     waiting longer for handshakes under way would drop more SYNs than it
//     saves handshakes, each a second's delay for its client.)
//
// While it runs, the process has one processor more (GOMAXPROCS), which
// Detach gives back when it returns. Detach holds a processor in system
// calls (reading /proc/self/fd, then polling the accept queues), and the
// fast path's blocking reader may hold another. Without a spare processor,
// the server's accept waits for Go's system monitor to take one back, up to
// 10 ms, and so does the closing of the queue: a connection queued when
// the filter goes on then keeps SYNs dropped for milliseconds, not
// microseconds.
//
// It returns how many sockets it detached.
func Detach(addrs []netip.AddrPort) (int, error) {
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(procs + 1)
	defer runtime.GOMAXPROCS(procs)
	own, err := ownInodes()
	if err != nil {
		return 0, err
	}
	n := 0
	var listeners []listener
	for _, fd := range own {
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		local, ok := addrPort(sa)
		if !ok || !contains(addrs, local) {
			continue
		}
		if typ == unix.SOCK_STREAM {
			if listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening == 1 {
				listeners = append(listeners, listener{fd: fd, local: local})
			}
			continue
		}
		if typ != unix.SOCK_DGRAM {
			continue
		}
		if _, err := unix.Getpeername(fd); err == nil {
			continue // already detached
		}
		var peer unix.Sockaddr = &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}
		if local.Addr().Is6() {
			peer = &unix.SockaddrInet6{Port: 9, Addr: netip.IPv6Loopback().As16()}
		}
		if err := unix.Connect(fd, peer); err != nil {
			return n, fmt.Errorf("detaching UDP socket on %s: %w", local, err)
		}
		n++
	}
	m, err := shutListeners(listeners, closeListeners(listeners), acceptWait)
	return n + m, err
}

// acceptWait bounds how long Detach waits for the server to accept what a
// TCP listener closed to new connections has queued.
const acceptWait = 500 * time.Millisecond

// queuePoll is how often shutListeners looks at an accept queue.
var queuePoll = unix.NsecToTimespec(int64(50 * time.Microsecond))

type listener struct {
	fd    int
	local netip.AddrPort
}

// dropSYN is a classic BPF program for a TCP socket (which it sees from the
// TCP header on): it drops segments with SYN set and keeps the others whole.
var dropSYN = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13}, // the flags
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: 0x02, Jt: 0, Jf: 1},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
}

// closeListeners gives each of ls the filter that drops SYNs, and returns
// those that took it. A listener that takes none is shut down at once, as
// before there was a filter, resetting what it has queued: a Multipath TCP
// listener (Go's default, unless GODEBUG multipathtcp=0, as the agent
// sets) refuses socket filters (EOPNOTSUPP), and some kernels refuse one
// to a process without privileges (EPERM: this project's test machine
// does). Closing is an improvement on a drain, never a reason for one to
// fail.
func closeListeners(ls []listener) []listener {
	var closed []listener
	for _, l := range ls {
		prog := unix.SockFprog{Len: uint16(len(dropSYN)), Filter: &dropSYN[0]}
		if unix.SetsockoptSockFprog(l.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog) == nil {
			closed = append(closed, l)
		}
	}
	return closed
}

// shutListeners waits up to wait for the accept queues of closed to empty,
// then shuts every one of ls down for reading. It looks every queuePoll, in
// a sleep of its thread: a timer of Go's wakes the goroutine up to a
// millisecond late when the process is idle, and the SYNs are dropped
// meanwhile.
func shutListeners(ls, closed []listener, wait time.Duration) (int, error) {
	deadline := time.Now().Add(wait)
	for _, l := range closed {
		for time.Now().Before(deadline) {
			// For a listener, TCP_INFO's unacked is its accept queue.
			info, err := unix.GetsockoptTCPInfo(l.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil || info.Unacked == 0 {
				break
			}
			_ = unix.Nanosleep(&queuePoll, nil)
		}
	}
	n := 0
	for _, l := range ls {
		if err := unix.Shutdown(l.fd, unix.SHUT_RD); err != nil {
			return n, fmt.Errorf("detaching TCP listener on %s: %w", l.local, err)
		}
		n++
	}
	return n, nil
}

// Established returns the number of established TCP connections to addrs.
func Established(addrs []netip.AddrPort) (int, error) {
	n := 0
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		socks, err := parseFile("tcp", path)
		if err != nil {
			return 0, err
		}
		for _, s := range socks {
			if s.State == stateTCPEstablished && contains(addrs, s.Local) {
				n++
			}
		}
	}
	return n, nil
}

func contains(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func addrPort(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch v := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(v.Addr), uint16(v.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(v.Addr).Unmap(), uint16(v.Port)), true
	}
	return netip.AddrPort{}, false
}

// ownInodes maps the inode of each socket this process holds to its fd.
func ownInodes() (map[uint64]int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("listing own file descriptors: %w", err)
	}
	out := map[uint64]int{}
	for _, e := range entries {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		ino, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
		if err != nil {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		out[n] = fd
	}
	return out, nil
}

func parseFile(proto, path string) ([]Socket, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil // no IPv6 in this kernel
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	return parse(proto, bufio.NewScanner(f))
}

// parse reads the table format of /proc/net/{udp,tcp}[6]:
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//	0: 0A60000A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 ...
func parse(proto string, sc *bufio.Scanner) ([]Socket, error) {
	var out []Socket
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		local, err := parseAddr(fields[1])
		if err != nil {
			return nil, err
		}
		remote, err := parseAddr(fields[2])
		if err != nil {
			return nil, err
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("bad state %q", fields[3])
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad inode %q", fields[9])
		}
		out = append(out, Socket{Proto: proto, Local: local, Remote: remote, State: int(st), Inode: inode})
	}
	return out, sc.Err()
}

// parseAddr parses "0A60000A:0035": the address as 32-bit words in host
// byte order, then the port in hex.
func parseAddr(s string) (netip.AddrPort, error) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(host)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		w := binary.BigEndian.Uint32(raw[i:])
		binary.NativeEndian.PutUint32(raw[i:], w)
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), nil
}
