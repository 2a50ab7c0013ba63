// The agent's listeners are plain TCP (see cmd/node-local-coredns), and so
// are this test's.
//
//go:debug multipathtcp=0
package sockets

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestDetachServesQueuedConnections: connections that completed their
// handshake before a TCP listener is detached, but that the server had not
// accepted yet, are accepted and served, not reset; a connection attempted
// once detaching began does not complete on the listener, and once Detach
// returns, nothing listens. While Detach waits, the process has a
// processor more for the server's accept, and gets its GOMAXPROCS back.
func TestDetachServesQueuedConnections(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()

	// Queued: the handshake completes in the kernel; nobody accepts yet.
	var clients []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}

	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := Detach([]netip.AddrPort{addr})
		done <- result{n, err}
	}()
	time.Sleep(100 * time.Millisecond) // Detach waits for the queue
	if got := runtime.GOMAXPROCS(0); got != procs+1 {
		t.Errorf("GOMAXPROCS %d while Detach waits, want %d (one spare processor)", got, procs+1)
	}

	// A new connection now: its SYN is dropped, so it cannot complete.
	if c, err := net.DialTimeout("tcp", addr.String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Error("a connection completed on a listener being detached")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) && !isTimeout(err) {
		t.Errorf("a new connection failed with %v, want a timeout (its SYN dropped)", err)
	}

	// The server accepts what was queued and serves it.
	for i := range clients {
		s, err := ln.Accept()
		if err != nil {
			t.Fatalf("accepting queued connection %d: %v", i, err)
		}
		defer s.Close()
		if _, err := s.Write([]byte("ok")); err != nil {
			t.Fatalf("writing to queued connection %d: %v", i, err)
		}
	}
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
			t.Errorf("queued connection %d: read %q, %v; want it served", i, b, err)
		}
	}

	select {
	case r := <-done:
		if r.err != nil || r.n != 1 {
			t.Fatalf("Detach = %d, %v; want 1 listener detached", r.n, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Detach did not return")
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Detach, want %d back", got, procs)
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connecting after Detach: %v, want refused (nothing listens)", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestDetachCompletesHandshakesUnderWay: a connection whose handshake is
// under way when its listener is closed to new connections (the client's
// ACK not yet in) completes, and is accepted and served before the
// listener is shut down. Run in a network namespace of its own, where an
// iptables rule holds the client's ACK back until the listener is closed.
func TestDetachCompletesHandshakesUnderWay(t *testing.T) {
	name := fmt.Sprintf("nlc-detach-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating namespace %s (the test needs root): %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "link", "set", "lo", "up")

	// The listener and the client, made in the namespace.
	var (
		ln  net.Listener
		c   net.Conn
		err error
	)
	inNamespace(t, name, func() {
		if ln, err = net.Listen("tcp", "127.0.0.1:5353"); err != nil {
			return
		}
		run("iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "5353", "--tcp-flags", "SYN,ACK", "ACK", "-j", "DROP")
		// The SYN and the SYN-ACK pass: the client's side is established,
		// the listener's handshake waits for the ACK.
		c, err = net.DialTimeout("tcp", "127.0.0.1:5353", 2*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer c.Close()
	fd := listenerFD(t, ln)
	l := []listener{{fd: fd, local: netip.MustParseAddrPort("127.0.0.1:5353")}}

	// The rule holds: the handshake is not complete, nothing is queued.
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.Unacked != 0 {
		t.Fatalf("%d connections queued before closing; want the handshake held back", info.Unacked)
	}
	closed := closeListeners(l)
	if len(closed) != 1 {
		t.Fatalf("closeListeners = %v; want the listener closed", closed)
	}
	// The ACK goes through now, with the query: the handshake completes.
	run("iptables", "-D", "OUTPUT", "-p", "tcp", "--dport", "5353", "--tcp-flags", "SYN,ACK", "ACK", "-j", "DROP")
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer s.Close()
		_, err = s.Write([]byte("ok"))
		served <- err
	}()
	if _, err := shutListeners(l, closed, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("the connection under way was not served: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
		t.Errorf("client read %q, %v; want the answer", b, err)
	}
}

// inNamespace runs f on a thread in network namespace name.
func inNamespace(t *testing.T, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("returning to the test's namespace: %v", err))
		}
	}()
	f()
}

func listenerFD(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}
