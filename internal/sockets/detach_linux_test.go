// The agent's listeners are plain TCP (see cmd/node-local-coredns), and so
// are this test's.
//
//go:debug multipathtcp=0
package sockets

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestDetachServesQueuedConnections: connections that completed their
// handshake before a TCP listener is detached, but that the server had not
// accepted yet, are accepted and served, not reset; a connection attempted
// once detaching began does not complete on the listener, and once Detach
// returns, nothing listens.
func TestDetachServesQueuedConnections(t *testing.T) {
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
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connecting after Detach: %v, want refused (nothing listens)", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
