package fastcache

import (
	"encoding/binary"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

func TestTCPCaps(t *testing.T) {
	for _, tc := range []struct {
		name             string
		soft             int64
		total, perClient int
	}{
		{"no soft limit", math.MaxInt64, 1024, 128},
		{"unknown", 0, 1024, 128},
		{"the DaemonSet's 128 MiB (soft limit 85 %)", 128 << 20 * 85 / 100, 174, 21},
		{"1 GiB", 1 << 30 * 85 / 100, 1392, 174},
		{"tiny", 16 << 20, 25, 4},
		{"tinier", 4 << 20, 16, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total, per := tcpCaps(tc.soft)
			if total != tc.total || per != tc.perClient {
				t.Errorf("tcpCaps(%d) = %d, %d; want %d, %d", tc.soft, total, per, tc.total, tc.perClient)
			}
		})
	}
}

// The listener admits connections up to its caps, refuses the rest by
// reason, and gives a place back when a connection closes (once, however
// often it is closed).
func TestCapListenerAdmit(t *testing.T) {
	l := newCapListener(nil, "dns://test-admit:53", 3, 2)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	steps := []struct {
		client  netip.Addr
		release bool
		want    string // "", "total" or "client"
	}{
		{client: a},
		{client: a},
		{client: a, want: "client"},
		{client: b},
		{client: b, want: "total"},
		{client: a, release: true},
		{client: b},
		{client: a, want: "total"},
	}
	for i, s := range steps {
		if s.release {
			l.release(s.client)
			continue
		}
		got := ""
		switch l.admit(s.client) {
		case l.refusedTotal:
			got = "total"
		case l.refusedClient:
			got = "client"
		case nil:
		default:
			got = "?"
		}
		if got != s.want {
			t.Errorf("step %d (%s): refused %q, want %q", i, s.client, got, s.want)
		}
	}
	if v := testutil.ToFloat64(l.openGauge); v != 3 {
		t.Errorf("open connections gauge %v, want 3", v)
	}
	if v := testutil.ToFloat64(l.refusedClient); v != 0 {
		t.Errorf("the counters count in Accept, not in admit: %v", v)
	}
	// A connection closed twice gives its place back once.
	p1, p2 := net.Pipe()
	defer p2.Close()
	c := &cappedConn{Conn: p1, l: l, client: b}
	c.Close()
	c.Close()
	if v := testutil.ToFloat64(l.openGauge); v != 2 {
		t.Errorf("open connections gauge %v after one close, want 2", v)
	}
}

// An announced 65,535-byte message costs what has arrived, not what was
// announced; a whole message is read exactly, and a short one is an error.
func TestArrivalReader(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	type result struct {
		m   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := arrivalReader{}.ReadTCP(server, 2*time.Second)
		done <- result{m, err}
	}()
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], 65535)
	client.Write(l[:])
	client.Write(make([]byte, 100))
	client.Close()
	r := <-done
	if r.err != io.ErrUnexpectedEOF || r.m != nil {
		t.Fatalf("a message cut short: %d bytes, %v; want io.ErrUnexpectedEOF", len(r.m), r.err)
	}

	for _, n := range []int{1, 511, 512, 513, 3000, 65535} {
		client, server := net.Pipe()
		go func() {
			m, err := arrivalReader{}.ReadTCP(server, 2*time.Second)
			done <- result{m, err}
		}()
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(i)
		}
		binary.BigEndian.PutUint16(l[:], uint16(n))
		go func() {
			client.Write(l[:])
			for o := 0; o < n; o += 700 { // in pieces, as a slow client sends
				client.Write(msg[o:min(o+700, n)])
			}
		}()
		r := <-done
		if r.err != nil || string(r.m) != string(msg) {
			t.Errorf("a %d-byte message: %d bytes read, %v", n, len(r.m), r.err)
		}
		if cap(r.m) > max(2*n, firstChunk) {
			t.Errorf("a %d-byte message read into %d bytes", n, cap(r.m))
		}
		client.Close()
		server.Close()
	}
}

// A message whose bytes do not come costs the first chunk only (miekg/dns
// allocates the 65,535 bytes announced).
func TestArrivalReaderHeld(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() {
		client.Write([]byte{0xff, 0xff})
		client.Write(make([]byte, 300))
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := arrivalReader{}.ReadTCP(server, 300*time.Millisecond)
	runtime.ReadMemStats(&after)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("a held message: %v, want a timeout", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 16<<10 {
		t.Errorf("a held 65,535-byte message allocated %d bytes", n)
	}
}

// Over TCP, a CoreDNS server block with fastcache answers through the fast
// path's listener, which closes a client's connections past its cap at
// once while another client's are served.
func TestTCPConnectionsCapped(t *testing.T) {
	up := authServer(t)
	addr := startCoreDNS(t, ".", "    fastcache\n    forward . "+up)
	l := fastConn(t, addr).l
	if l == nil {
		t.Fatal("no fast path")
	}
	if l.tcp == nil {
		t.Fatal("the fast path took no TCP listener")
	}
	capped := l.tcp.Listener.(*capListener)
	q := new(dns.Msg)
	q.SetQuestion("a.example.org.", dns.TypeA)
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}

	// Every connection comes to the capped listener: CoreDNS's listening
	// socket was taken, the fast path's is the only one on the address.
	ap := netip.MustParseAddrPort(addr)
	listening := 0
	if err := eachOwnSocket(ap, -1, func(fd int) error {
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && on == 1 {
			listening++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if listening != 1 {
		t.Errorf("%d listening TCP sockets on %s, want the fast path's alone", listening, addr)
	}
	for range 20 {
		if _, _, err := c.Exchange(q, addr); err != nil {
			t.Fatalf("a query over TCP: %v", err)
		}
	}
	// The server closes its side when it reads the client's close.
	waitOpen(t, capped, 0)

	// One client address (127.0.0.1) holds its share.
	var held []net.Conn
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for range capped.perClient {
		h, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	waitOpen(t, capped, capped.perClient)
	refused := testutil.ToFloat64(capped.refusedClient)
	if _, _, err := c.Exchange(q, addr); err == nil {
		t.Error("a connection past the client's cap was answered")
	}
	if got := testutil.ToFloat64(capped.refusedClient); got != refused+1 {
		t.Errorf("refused for the client's cap: %v, want %v", got, refused+1)
	}
	// Another client address is served meanwhile.
	other := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	if _, _, err := other.Exchange(q, addr); err != nil {
		t.Errorf("another client past the first one's cap: %v", err)
	}
}

// waitOpen waits up to 2 s for l to count want connections open.
func waitOpen(t *testing.T, l *capListener, want int) {
	t.Helper()
	for i := 0; testutil.ToFloat64(l.openGauge) != float64(want); i++ {
		if i == 100 {
			t.Fatalf("%v connections counted open, want %d", testutil.ToFloat64(l.openGauge), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
