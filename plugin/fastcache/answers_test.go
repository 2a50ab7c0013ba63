package fastcache

import (
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestOneAnswerPerQuery: a client asking a cached name every 50 ms for
// longer than miekg/dns's 2 s read deadline gets exactly one answer per
// query, in both ways of waiting. (The blocking reader once answered the
// last batch again after every deadline.)
func TestOneAnswerPerQuery(t *testing.T) {
	up := authServer(t)
	for _, procs := range []int{1, max(2, runtime.GOMAXPROCS(0))} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			prev := runtime.GOMAXPROCS(procs)
			t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
			addr := startCoreDNS(t, ".", "    fastcache {\n        success 1000 30\n    }\n    forward . "+up)
			if c := fastConn(t, addr); c.blocking != (procs >= 2) {
				t.Fatalf("blocking reader %v with GOMAXPROCS %d", c.blocking, procs)
			}
			q := new(dns.Msg)
			q.SetQuestion("a.example.org.", dns.TypeA)
			untilFast(t, addr, q, ".")

			conn, err := net.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := &dns.Conn{Conn: conn}
			const queries = 60 // 3 s
			answers := map[uint16]int{}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					_ = c.SetReadDeadline(time.Now().Add(time.Second))
					r, err := c.ReadMsg()
					if err != nil {
						return
					}
					answers[r.Id]++
				}
			}()
			sent := map[uint16]bool{}
			for i := range queries {
				m := q.Copy()
				m.Id = uint16(1000 + i)
				sent[m.Id] = true
				if err := c.WriteMsg(m); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			<-done // a second without answers
			for id, n := range answers {
				if !sent[id] {
					t.Errorf("an answer with ID %d, which no query had", id)
				} else if n != 1 {
					t.Errorf("query %d answered %d times", id, n)
				}
			}
			if len(answers) != queries {
				t.Errorf("%d of %d queries answered", len(answers), queries)
			}
		})
	}
}

// TestBufsizeBeforeTheFastPath: bufsize before fastcache leaves the fast
// path on, and its answers cap the client's buffer size as bufsize does
// (the echoed size is the cap, as CoreDNS's cache echoes it).
func TestBufsizeBeforeTheFastPath(t *testing.T) {
	up := authServer(t)
	addr := startCoreDNS(t, ".", "    bufsize 1232\n    fastcache {\n        success 1000 30\n    }\n    forward . "+up)
	if c := fastConn(t, addr); c.l == nil {
		t.Fatal("no fast path")
	}
	q := new(dns.Msg)
	q.SetQuestion("a.example.org.", dns.TypeA)
	q.SetEdns0(4096, false)
	untilFast(t, addr, q, ".")
	before := served(".")
	r := exchange(t, "udp", addr, q)
	if served(".") != before+1 {
		t.Fatal("not answered by the fast path")
	}
	if o := r.IsEdns0(); o == nil || o.UDPSize() != 1232 {
		t.Errorf("the fast path's answer has OPT %v, want the buffer size 1232", o)
	}
}
