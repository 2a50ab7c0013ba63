package nodesim

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestUDPLookupDistinctIDs: when the random IDs of a lookup's A and AAAA
// queries come out the same (once in 65,536 lookups), both answers are
// still told apart and counted, not one reported lost.
func TestUDPLookupDistinctIDs(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(b[:n]) != nil {
				continue
			}
			r := new(dns.Msg)
			r.SetReply(q)
			p, _ := r.Pack()
			_, _ = pc.WriteTo(p, from)
		}
	}()

	orig := dns.Id
	t.Cleanup(func() { dns.Id = orig })
	next := []uint16{7, 7, 8} // the first two the same
	dns.Id = func() uint16 {
		id := next[0]
		if len(next) > 1 {
			next = next[1:]
		}
		return id
	}
	out := udpLookup(pc.LocalAddr().String(), "a.example.org.", 2*time.Second)
	for _, o := range out {
		if o.Kind != OK {
			t.Errorf("%s: %s, want both answers counted", dns.TypeToString[o.Qtype], o.Kind)
		}
	}
}
