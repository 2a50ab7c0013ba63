package fastcache

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/coredns/coredns/plugin/pkg/reuseport"
	"golang.org/x/sys/unix"
)

// listenTCP opens the fast path's TCP listener on addr, in the address's
// SO_REUSEPORT group beside CoreDNS's, and returns it with its descriptor.
func listenTCP(addr netip.AddrPort) (net.Listener, int, error) {
	ln, err := reuseport.Listen("tcp", addr.String())
	if err != nil {
		return nil, 0, fmt.Errorf("listening on %s over TCP: %w", addr, err)
	}
	fd := -1
	if sc, ok := ln.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(d uintptr) { fd = int(d) })
		}
	}
	if fd < 0 {
		ln.Close()
		return nil, 0, fmt.Errorf("listening on %s over TCP: no descriptor", addr)
	}
	return ln, fd, nil
}

// takeTCP leaves the fast path's listener (descriptor keep) alone in
// addr's SO_REUSEPORT group: every other listening TCP socket of this
// process bound to addr (CoreDNS's) has its descriptor pointed at a socket
// that receives nothing (dup3). CoreDNS's server keeps its listener, which
// never accepts a connection again, and hands it on at a reload (caddy
// duplicates its descriptor) and closes it at its stop, as it would have.
// The connections the kernel queued on CoreDNS's socket before (it joined
// the group first: an agent starting beside the one it replaces gets
// connections at once) are accepted and handed to hand, not reset.
func takeTCP(addr netip.AddrPort, keep int, hand func(net.Conn)) error {
	void, err := voidListener()
	if err != nil {
		return err
	}
	return eachOwnSocket(addr, keep, func(fd int) error {
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
			return nil
		}
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on != 1 {
			return nil
		}
		// The socket, and what is queued on it, outlive CoreDNS's
		// descriptor until they are handed on.
		held, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("holding TCP socket %d on %s: %w", fd, addr, err)
		}
		if err := unix.Dup3(void, fd, unix.O_CLOEXEC); err != nil {
			unix.Close(held)
			return fmt.Errorf("taking TCP socket %d on %s from CoreDNS: %w", fd, addr, err)
		}
		drain(held, hand)
		return nil
	})
}

// drain accepts the connections queued on the listening socket fd (non-
// blocking: Go's), hands each to hand, and closes fd: it leaves addr's
// group then, and a connection the kernel gives it in the microseconds
// after the last accept is reset.
func drain(fd int, hand func(net.Conn)) {
	defer unix.Close(fd)
	for {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			return // EAGAIN: none left
		}
		f := os.NewFile(uintptr(nfd), "tcp")
		c, err := net.FileConn(f)
		f.Close()
		if err == nil {
			hand(c)
		}
	}
}

var void struct {
	once sync.Once
	fd   int
	err  error
}

// voidListener returns the process's listening socket that never
// completes a connection: bound to a port of loopback that the kernel
// picks, with a socket filter that drops every packet (a SYN included).
func voidListener() (int, error) {
	void.once.Do(func() {
		void.fd, void.err = openVoid()
	})
	return void.fd, void.err
}

func openVoid() (int, error) {
	// Non-blocking, as Go's network poller keeps a listener's descriptor
	// (O_NONBLOCK belongs to the socket, which dup3 shares): CoreDNS's
	// accept then waits in the poller, which its Close wakes, and not in
	// the kernel, which nothing would.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("opening a TCP socket: %w", err)
	}
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	for _, s := range []struct {
		name string
		do   func() error
	}{
		{"dropping every packet", func() error {
			return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]})
		}},
		// Loopback may be down in a new network namespace.
		{"binding loopback", func() error {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
				return err
			}
			return unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		}},
		{"listening", func() error { return unix.Listen(fd, 1) }},
	} {
		if err := s.do(); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s on the socket that stands in for CoreDNS's TCP listener: %w", s.name, err)
		}
	}
	return fd, nil
}
