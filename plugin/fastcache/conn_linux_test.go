package fastcache

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TestSocketHitAllocatesNothing: a hit through the fast path's socket (read,
// answer, send) allocates nothing, and the client gets the stored answer
// with its own ID.
func TestSocketHitAllocatesNothing(t *testing.T) {
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) { testSocketHit(t, blocking) })
	}
}

func testSocketHit(t *testing.T, blocking bool) {
	q := queryMsg("a.example.org.", dns.TypeA)
	ln := fastListener(t, q)
	c, err := listenMode(netip.MustParseAddrPort("127.0.0.1:0"), blocking)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.l = ln
	// With the prometheus plugin's request metrics, as in the agent.
	for _, r := range *ln.routes.Load() {
		r.f.m.server = &serverMetrics{zone: ".", plugin: "errors"}
	}
	local := c.boundAddr(t)
	client, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(local))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	p := pack(t, q)
	in := make([]byte, 512)
	roundTrip := func() {
		if _, err := client.Write(p); err != nil {
			t.Fatal(err)
		}
		if err := c.receive(); err != nil {
			t.Fatal(err)
		}
		for i := range c.rx.n {
			h := &c.rx.hdrs[i]
			if served, _ := c.serve(i, c.rx.bufs[i][:h.n]); !served {
				t.Fatal("not answered by the fast path")
			}
		}
		if err := c.flush(); err != nil {
			t.Fatal(err)
		}
		n, err := client.Read(in)
		if err != nil {
			t.Fatal(err)
		}
		in = in[:n]
	}
	roundTrip()
	m := new(dns.Msg)
	if err := m.Unpack(in); err != nil || m.Id != q.Id || len(m.Answer) != 2 {
		t.Fatalf("answer %v (%v)", m, err)
	}
	in = in[:cap(in)]
	if allocs := testing.AllocsPerRun(200, func() { in = in[:cap(in)]; roundTrip() }); allocs != 0 {
		t.Errorf("a hit through the socket allocates %v times", allocs)
	}
}

// boundAddr is the address the kernel gave the socket.
func (c *conn) boundAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		t.Fatal(err)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		t.Fatalf("socket address %v", sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
}

// TestReaderStops: a reader waiting for packets returns at once when the
// socket is closed, and with a timeout when miekg/dns stops it with a read
// deadline in the past; in both ways of waiting. The blocking socket's idle
// wake-up is set to an hour, so that only the wake-up under test can end
// the wait.
func TestReaderStops(t *testing.T) {
	for _, blocking := range []bool{false, true} {
		for _, how := range []string{"close", "deadline"} {
			t.Run(fmt.Sprintf("blocking=%v/%s", blocking, how), func(t *testing.T) {
				c, err := listenMode(netip.MustParseAddrPort("127.0.0.1:0"), blocking)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.l = &listener{}
				hour := unix.NsecToTimeval(int64(time.Hour))
				if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &hour); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					_, _, err := c.ReadFrom(make([]byte, 512))
					done <- err
				}()
				time.Sleep(50 * time.Millisecond) // the reader is waiting
				if how == "close" {
					err = c.Close()
				} else {
					err = c.SetReadDeadline(time.Unix(1, 0))
				}
				if err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-done:
					want := net.ErrClosed
					if how == "deadline" {
						want = os.ErrDeadlineExceeded
					}
					if !errors.Is(err, want) {
						t.Errorf("reader returned %v, want %v", err, want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the reader is still waiting")
				}
			})
		}
	}
}

// TestReaderMode: the reader blocks in the kernel when Go has two
// processors or more, and waits in Go's poller with one; it leaves
// GOMAXPROCS as it is (and so Go's own updates of it to the container's
// CPU limit).
func TestReaderMode(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, procs := range []int{1, 2, 4} {
		runtime.GOMAXPROCS(procs)
		c, err := listen(netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		flags, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		nonblock := flags&unix.O_NONBLOCK != 0
		if c.blocking != (procs >= 2) || nonblock == c.blocking {
			t.Errorf("GOMAXPROCS=%d: blocking reader %v, O_NONBLOCK %v", procs, c.blocking, nonblock)
		}
		if got := runtime.GOMAXPROCS(0); got != procs {
			t.Errorf("GOMAXPROCS=%d: %d while the reader runs", procs, got)
		}
		c.Close()
	}
}
