package fastcache

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/reuseport"
)

// TestTakeTCPHandsQueued: a connection the kernel queued on CoreDNS's
// listener before the fast path took TCP (an agent starting beside the one
// it replaces gets connections before its fast path is up) is handed to
// the fast path and served, not reset; later connections come to the fast
// path's listener.
func TestTakeTCPHandsQueued(t *testing.T) {
	var (
		coredns net.Listener
		addr    netip.AddrPort
		err     error
	)
	for range 5 {
		addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
		if coredns, err = reuseport.Listen("tcp", addr.String()); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer coredns.Close()
	// Queued on CoreDNS's listener, which never accepts it.
	queued, err := net.DialTimeout("tcp", addr.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()

	fast, fd, err := listenTCP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	handed := 0
	if err := takeTCP(addr, fd, func(c net.Conn) {
		handed++
		go func() {
			defer c.Close()
			_, _ = c.Write([]byte("handed"))
		}()
	}); err != nil {
		t.Fatal(err)
	}
	if handed != 1 {
		t.Fatalf("%d connections handed on, want the one queued", handed)
	}
	_ = queued.SetReadDeadline(time.Now().Add(2 * time.Second))
	if b, err := io.ReadAll(queued); err != nil || string(b) != "handed" {
		t.Fatalf("the queued connection read %q, %v; want what the fast path wrote", b, err)
	}

	// Now every connection is the fast path's.
	go func() {
		for {
			c, err := fast.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("fast"))
			c.Close()
		}
	}()
	for i := range 20 {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(b) != "fast" {
			t.Fatalf("connection %d read %q, %v; want the fast path's listener's", i, b, err)
		}
	}
}
