package spread

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// discover looks the endpoints up now and every refresh until stopped.
func (s *Spread) discover() {
	defer close(s.done)
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		s.lookup()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// lookup asks kube-dns for the endpoints' name, through the endpoints known
// (or the Service), and sets the endpoints to its records. NXDOMAIN and an
// empty answer (no headless Service, or no endpoint ready) leave the Service
// alone; a lookup that fails keeps what was known.
func (s *Spread) lookup() {
	addrs, err := s.resolve()
	if err != nil {
		s.m.lookupErrors.Inc()
		if !s.lookupFailing {
			s.log("looking up the endpoints %s: %v; keeping the %d known until it answers", s.name, err, len(s.current()))
		}
		s.lookupFailing = true
		return
	}
	s.lookupFailing = false
	s.setEndpoints(addrs)
}

func (s *Spread) resolve() ([]string, error) {
	req := new(dns.Msg)
	req.SetQuestion(s.name, s.qtype)
	req.RecursionDesired = true
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	ret, err := s.exchange(ctx, request.Request{W: fakeWriter{}, Req: req})
	if err != nil {
		return nil, err
	}
	switch ret.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return nil, fmt.Errorf("answer %s", dns.RcodeToString[ret.Rcode])
	}
	var addrs []string
	for _, rr := range ret.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		default:
			continue
		}
		addrs = append(addrs, net.JoinHostPort(ip.String(), s.port))
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}

// current is the endpoints in the rotation.
func (s *Spread) current() []*upstream {
	if p := s.endpoints.Load(); p != nil {
		return *p
	}
	return nil
}

// setEndpoints makes addrs the endpoints: new ones start (healthy), gone
// ones leave the rotation and their connections close once the queries on
// them are done (after the read timeout at most).
func (s *Spread) setEndpoints(addrs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make([]*upstream, 0, len(addrs))
	keep := make(map[string]*upstream, len(addrs))
	for _, a := range addrs {
		u, ok := s.known[a]
		if !ok {
			u = s.newUpstream(a, false)
			s.start(u)
		}
		keep[a] = u
		next = append(next, u)
	}
	if len(keep) != len(s.known) || !sameKeys(keep, s.known) {
		s.log("kube-dns endpoints: %d %v", len(addrs), addrs)
	}
	s.endpoints.Store(&next)
	s.m.endpoints.Set(float64(len(next)))
	for a, u := range s.known {
		if _, ok := keep[a]; !ok {
			s.m.forget(a)
			time.AfterFunc(s.readTimeout+time.Second, func() { stopUpstream(u) })
		}
	}
	s.known = keep
}

func sameKeys(a, b map[string]*upstream) bool {
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}
