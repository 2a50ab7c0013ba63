package nodesim

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// FloodSpec is a hostile client's flood: queries sent from one UDP socket as
// fast as the rate allows, without waiting for answers, each for a name
// from Name. It is bounded by Rate × Duration queries and stops by itself.
type FloodSpec struct {
	Server   netip.AddrPort
	Rate     int
	Duration time.Duration
	// Name returns the i-th query's name (fully qualified).
	Name func(i int) string
	// Qtype of every query (default A).
	Qtype uint16
	// EDNS, if set, is the UDP buffer size every query advertises.
	EDNS uint16
}

// FloodReport counts what a flood sent and what came back, by rcode.
type FloodReport struct {
	Sent    int64
	Answers map[string]int64
}

// Flood runs spec from namespace ns and returns when it is done (one second
// after the last query, for late answers).
func Flood(ns string, spec FloodSpec) (*FloodReport, error) {
	if spec.Qtype == 0 {
		spec.Qtype = dns.TypeA
	}
	var conn net.Conn
	if err := InNS(ns, func() error {
		var err error
		conn, err = net.Dial("udp", spec.Server.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("dialing %s from %s: %w", spec.Server, ns, err)
	}
	defer conn.Close()
	rep := &FloodReport{Answers: map[string]int64{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				continue // ICMP errors while nothing listens
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			mu.Lock()
			rep.Answers[dns.RcodeToString[m.Rcode]]++
			mu.Unlock()
		}
	}()
	total := int64(float64(spec.Rate) * spec.Duration.Seconds())
	start := time.Now()
	var sent atomic.Int64
	m := new(dns.Msg)
	for i := int64(0); i < total; i++ {
		// Pace in steps of a millisecond's worth.
		if due := start.Add(time.Duration(float64(i) / float64(spec.Rate) * float64(time.Second))); time.Until(due) > time.Millisecond {
			time.Sleep(time.Until(due))
		}
		m.SetQuestion(spec.Name(int(i)), spec.Qtype)
		m.Extra = nil
		if spec.EDNS != 0 {
			m.SetEdns0(spec.EDNS, false)
		}
		m.Id = uint16(i)
		p, err := m.Pack()
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(p); err == nil {
			sent.Add(1)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	wg.Wait()
	rep.Sent = sent.Load()
	return rep, nil
}
