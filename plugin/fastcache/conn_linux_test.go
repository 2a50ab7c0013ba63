package fastcache

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TestSocketHitAllocatesNothing: a hit through the fast path's socket (read,
// answer, send) allocates nothing, and the client gets the stored answer
// with its own ID.
func TestSocketHitAllocatesNothing(t *testing.T) {
	q := queryMsg("a.example.org.", dns.TypeA)
	ln := fastListener(t, q)
	c, err := listen(netip.MustParseAddrPort("127.0.0.1:0"))
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
			if !c.serve(i, c.rx.bufs[i][:h.n]) {
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
