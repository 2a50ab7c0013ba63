package server

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzTCPStream: whatever byte stream a client sends over TCP (frames of
// any length, truncated, garbage, several queries at once), the built-in
// Corefile's server answers only with well-formed responses, closes the
// connection when the client is done, and keeps answering others.
func FuzzTCPStream(f *testing.F) {
	frame := func(m *dns.Msg) []byte {
		p, _ := m.Pack()
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(p))), p...)
	}
	q := new(dns.Msg)
	q.SetQuestion("a.example.org.", dns.TypeA)
	f.Add(frame(q))
	f.Add(append(frame(q), frame(q)...))
	f.Add([]byte{0xff, 0xff, 1, 2, 3})                // announces 65,535 bytes, sends 3
	f.Add([]byte{0, 0})                               // an empty message
	f.Add(append([]byte{0, 12}, make([]byte, 12)...)) // a header alone
	resp := q.Copy()
	resp.Response = true
	f.Add(frame(resp)) // QR=1
	up := startBigUpstream(f, 0)
	fuzzAddr := startBuiltIn(f, up.addr, nil)
	f.Fuzz(func(t *testing.T, stream []byte) {
		c, err := net.DialTimeout("tcp", fuzzAddr, time.Second)
		if err != nil {
			t.Fatalf("dialing the server: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(stream); err != nil && !errors.Is(err, net.ErrClosed) {
			// The server may close first; that is fine.
			return
		}
		_ = c.(*net.TCPConn).CloseWrite()
		dc := &dns.Conn{Conn: c}
		for {
			r, err := dc.ReadMsg()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("the server kept a connection open 5 s after the client was done")
				}
				if errors.Is(err, io.EOF) || !errors.As(err, &ne) {
					break // closed, or a frame cut by the close
				}
				break
			}
			if !r.Response {
				t.Fatalf("an answer without QR: %v", r)
			}
		}
		// Still serving.
		m := new(dns.Msg)
		m.SetQuestion("alive.example.org.", dns.TypeA)
		if _, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, netip.MustParseAddrPort(fuzzAddr).String()); err != nil {
			t.Fatalf("the server stopped answering: %v", err)
		}
	})
}
