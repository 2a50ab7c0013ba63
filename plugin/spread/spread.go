// Package spread is a CoreDNS plugin that sends the queries it is given to
// kube-dns's endpoints themselves, spread evenly over every endpoint, and
// tries another endpoint when one does not answer in time. The endpoints are
// learned from kube-dns (the A or AAAA records of a headless Service with
// kube-dns's selector); while none are known the queries go to the
// Service's ClusterIP, as forward would send them. See README.md.
package spread

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/debug"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/coro"
)

const pluginName = "spread"

// Penalties: an endpoint that failed to answer is left out of the rotation
// for minBackoff, doubled at each failure in a row up to maxBackoff.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

var (
	errNoUpstream   = errors.New("no upstream answered")
	errLimitReached = errors.New("too many queries in flight to kube-dns")
	// errInvalidRequest is a query that cannot be packed: FORMERR.
	errInvalidRequest = errors.New("incomplete or invalid request")
)

// Spread is the plugin: one per server block.
type Spread struct {
	Next plugin.Handler

	from string
	// service is the Service's ClusterIP (or ClusterIPs): the path while no
	// endpoint is known, and the last resort when every endpoint failed.
	service []*upstream
	// name is the headless Service's name whose records are the endpoints
	// ("" when the endpoints are not looked up); port is theirs.
	name    string
	port    string
	qtype   uint16
	refresh time.Duration

	readTimeout        time.Duration
	expire             time.Duration
	hedgeMin, hedgeMax time.Duration
	attempts           int
	maxInFlight        int64

	inFlight atomic.Int64
	// tries hands an attempt to an idle trier; triers counts them.
	tries     chan tryJob
	triers    atomic.Int32
	rr        atomic.Uint32
	endpoints atomic.Pointer[[]*upstream]
	// known is the last set of endpoint addresses looked up, by address.
	mu    sync.Mutex
	known map[string]*upstream

	m *serverMetrics
	// lookupFailing is set while the endpoints' lookups fail (logged once).
	lookupFailing bool
	started       atomic.Bool
	stop          chan struct{}
	done          chan struct{}
	log           func(format string, args ...any)
	clock         func() time.Time
}

// upstream is one address queries go to: an endpoint or the Service.
type upstream struct {
	addr    string
	pool    *pool
	service bool
	// srtt is the smoothed time this upstream took to answer, in ns.
	srtt atomic.Int64
	// until is when its penalty ends (UnixNano); 0 while it is healthy.
	until   atomic.Int64
	backoff atomic.Int64
	// trial is held by the one query that tries a penalized upstream again
	// once its penalty is over.
	trial atomic.Bool
	m     *upstreamMetrics
}

// Name implements plugin.Handler.
func (s *Spread) Name() string { return pluginName }

// ServeDNS implements plugin.Handler.
func (s *Spread) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	if !plugin.Name(s.from).Matches(state.Name()) {
		return plugin.NextOrFailure(s.Name(), s.Next, ctx, w, r)
	}
	ret, err := s.exchange(ctx, state)
	if err != nil {
		if errors.Is(err, errLimitReached) {
			return dns.RcodeRefused, err
		}
		if errors.Is(err, errInvalidRequest) {
			return dns.RcodeFormatError, err
		}
		return dns.RcodeServerFailure, err
	}
	if !state.Match(ret) {
		debug.Hexdumpf(ret, "Wrong reply for id: %d, %s %d", ret.Id, state.QName(), state.QType())
		formerr := new(dns.Msg)
		formerr.SetRcode(state.Req, dns.RcodeFormatError)
		w.WriteMsg(formerr)
		return 0, nil
	}
	w.WriteMsg(ret)
	return 0, nil
}

// attempt is one try of a query at one upstream.
type attempt struct {
	u *upstream
	// limit is how long the upstream has before the next attempt starts;
	// trial attempts start the next one at once, but are judged by limit.
	limit time.Duration
	trial bool
	start time.Time
	// sent is when the query was sent (the real time, which the deadlines
	// need, whatever the plugin's clock).
	sent time.Time
}

type result struct {
	i   int
	ret *dns.Msg
	err error
}

// exchange sends the query to its first upstream, to the next one when the
// first has not answered within its limit or has failed, and so on, and
// returns the first answer.
//
// The first attempt runs in the query's own goroutine while it waits no
// longer than its limit: most answers arrive well within it, and waking
// another goroutine for the attempt and again for its answer cost more
// than the rest of a miss's handling together. When the limit passes first,
// a trier goes on waiting on the connection while the next attempt starts.
func (s *Spread) exchange(ctx context.Context, state request.Request) (*dns.Msg, error) {
	q, err := pack(state.Req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidRequest, err)
	}
	var buf [4]attempt
	plan := s.plan(buf[:0])
	var results chan result // made once an attempt runs elsewhere
	launched, pending := 0, 0
	next := func() bool { // the next attempt, if within the plan and the cap
		if launched == len(plan) || s.inFlight.Add(1) > s.maxInFlight {
			if launched < len(plan) {
				s.inFlight.Add(-1)
			}
			return false
		}
		a := &plan[launched]
		a.start = s.clock()
		launched++
		pending++
		a.u.m.requests.Inc()
		return true
	}
	launch := func() bool {
		if !next() {
			return false
		}
		if results == nil {
			results = make(chan result, len(plan))
		}
		s.goTry(tryJob{i: launched - 1, a: &plan[launched-1], q: q, results: results})
		return true
	}
	refuse := func() (*dns.Msg, error) {
		if plan[0].trial { // not tried: the next query may
			plan[0].u.trial.Store(false)
		}
		s.m.refused.Inc()
		return nil, errLimitReached
	}
	// Run as a coroutine (package coro), the first try parks until its
	// answer; anything else waits detached.
	co := coro.FromContext(ctx)
	var lastErr error
	if !plan[0].trial {
		if !next() {
			return refuse()
		}
		a := &plan[0]
		ret, c, err := s.roundTrip(co, a, q, len(plan) > 1)
		switch {
		case err == nil:
			s.inFlight.Add(-1)
			s.won(plan[:1], 0)
			return ret, nil
		case c != nil: // the limit passed: a trier waits on, beside the next
			results = make(chan result, len(plan))
			s.goTry(tryJob{i: 0, a: a, q: q, c: c, results: results})
			if launch() {
				s.m.hedges.Inc()
			}
		default:
			s.inFlight.Add(-1)
			pending--
			s.judge(a, err)
			lastErr = err
			if !launch() {
				s.m.failed.Inc()
				return nil, errors.Join(errNoUpstream, lastErr)
			}
		}
	} else {
		if !launch() {
			return refuse()
		}
		// Trials start the next attempt at once.
		for plan[launched-1].trial && launch() {
		}
	}
	if co != nil {
		co.Detach()
	}
	timer := time.NewTimer(plan[launched-1].limit)
	defer timer.Stop()
	for {
		select {
		case res := <-results:
			pending--
			if res.err == nil {
				s.won(plan[:launched], res.i)
				return res.ret, nil
			}
			lastErr = res.err
			if launch() {
				resetTimer(timer, plan[launched-1].limit)
				continue
			}
			if pending == 0 {
				s.m.failed.Inc()
				return nil, errors.Join(errNoUpstream, lastErr)
			}
		case <-timer.C:
			if launch() {
				s.m.hedges.Inc()
				timer.Reset(plan[launched-1].limit)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tryJob is one attempt for a trier to run: q sent to a.u, or, when c is
// set, the wait for its answer on c.
type tryJob struct {
	i       int
	a       *attempt
	q       packed
	c       *upConn
	results chan<- result
}

// maxTriers bounds the long-lived goroutines that run attempts one after
// another. A trier's stack has grown to what an exchange needs; a new
// goroutine per attempt starts small and copies its stack as it packs and
// unpacks. Past the bound, an attempt runs in a goroutine of its own.
const maxTriers = 64

// goTry runs j in an idle trier, a new one while there are fewer than
// maxTriers, or a goroutine of its own.
func (s *Spread) goTry(j tryJob) {
	select {
	case s.tries <- j:
		return
	default:
	}
	if s.triers.Add(1) <= maxTriers {
		go s.trier(j)
		return
	}
	s.triers.Add(-1)
	go s.try(j)
}

// trier runs j, then every attempt it is handed, until the plugin stops.
func (s *Spread) trier(j tryJob) {
	defer s.triers.Add(-1)
	for {
		s.try(j)
		j = tryJob{} // nothing of the last query is kept while idle
		select {
		case j = <-s.tries:
		case <-s.stop:
			return
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	t.Reset(d)
}

// try runs one attempt, or waits on for its answer, and reports it.
func (s *Spread) try(j tryJob) {
	defer s.inFlight.Add(-1)
	var (
		ret *dns.Msg
		err error
	)
	if j.c != nil {
		ret, err = s.await(j.a, j.q, j.c)
	} else {
		ret, _, err = s.roundTrip(nil, j.a, j.q, false)
	}
	s.judge(j.a, err)
	j.results <- result{i: j.i, ret: ret, err: err}
}

// judge records the end of attempt a, which err failed: a failure takes
// its upstream out of the rotation. A trial attempt judges its upstream
// itself; the others are judged by exchange when an answer wins.
func (s *Spread) judge(a *attempt, err error) {
	rtt := s.clock().Sub(a.start)
	switch {
	case err != nil:
		a.u.m.failures.Inc()
		s.penalize(a.u)
	case a.trial && rtt > a.limit:
		s.penalize(a.u)
	case a.trial:
		s.healthy(a.u, rtt)
	}
	if a.trial {
		a.u.trial.Store(false)
	}
}

// roundTrip sends q to a's upstream and waits for the answer, up to the
// read timeout or, if hedged, up to a's limit; a connection the limit
// passed on, with nothing of the answer read yet, is returned to wait on.
// A pooled connection the upstream has closed is replaced, as forward
// does (the pool is finite; then a new connection is dialled). A hedged
// attempt's new connection gets no longer than the limit to be set up (a
// dial cannot be handed over): an upstream that drops packets fails it
// then, and the next attempt starts, as it would at the limit.
func (s *Spread) roundTrip(co *coro.Co, a *attempt, q packed, hedged bool) (*dns.Msg, *upConn, error) {
	dial := dialTimeout
	if hedged {
		dial = min(a.limit, dialTimeout)
	}
	for {
		c, cached, err := a.u.pool.get(time.Now(), dial, co)
		if err != nil {
			return nil, nil, err
		}
		if cached {
			a.u.m.connHits.Inc()
		} else {
			a.u.m.connMisses.Inc()
		}
		a.sent = time.Now()
		if err := c.send(q); err != nil {
			c.close()
			if cached {
				continue
			}
			return nil, nil, err
		}
		wait, timeout := a.sent.Add(s.readTimeout), false
		if hedged && a.limit < s.readTimeout {
			wait, timeout = a.sent.Add(a.limit), true
		}
		if co != nil && c.parks() {
			if err := c.c.SetReadDeadline(wait); err == nil {
				co.Park(c)
			}
		}
		ret, started, err := c.recv(q, wait)
		if err == nil {
			s.answered(a, c, ret)
			return ret, nil, nil
		}
		if timeout && !started && timedOut(err) {
			return nil, c, err
		}
		c.close()
		if cached && !started && closedByPeer(err) {
			continue
		}
		return nil, nil, err
	}
}

// await waits on c for the answer to q, sent by roundTrip, until the read
// timeout.
func (s *Spread) await(a *attempt, q packed, c *upConn) (*dns.Msg, error) {
	ret, _, err := c.recv(q, a.sent.Add(s.readTimeout))
	if err != nil {
		c.close()
		return nil, err
	}
	s.answered(a, c, ret)
	return ret, nil
}

// answered gives c back and records how long a's upstream took, as the
// proxy package does.
func (s *Spread) answered(a *attempt, c *upConn, ret *dns.Msg) {
	now := time.Now()
	a.u.pool.put(c, now)
	a.u.m.duration(ret.Rcode).Observe(now.Sub(a.sent).Seconds())
}

// closedByPeer reports whether err is a connection the other end closed.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// won records that attempt i answered first: the attempts started before it
// were slower than an upstream asked after them, and are penalized.
func (s *Spread) won(plan []attempt, i int) {
	w := &plan[i]
	w.u.m.answers.Inc()
	if i > 0 {
		s.m.failovers.Inc()
	}
	if !w.trial {
		s.healthy(w.u, s.clock().Sub(w.start))
	}
	for j := range i {
		if !plan[j].trial {
			s.penalize(plan[j].u)
		}
	}
}

// healthy records an answer in rtt.
func (s *Spread) healthy(u *upstream, rtt time.Duration) {
	old := u.srtt.Load()
	u.srtt.Store(old + (int64(rtt)-old)/8)
	if u.until.Load() != 0 {
		u.until.Store(0)
		u.backoff.Store(0)
		u.m.penalized.Set(0)
	}
}

// penalize takes u out of the rotation for its backoff, doubled, unless it
// is out already. The Service is never taken out: it is the last resort.
func (s *Spread) penalize(u *upstream) {
	if u.service {
		return
	}
	now := s.clock().UnixNano()
	if u.until.Load() > now {
		return
	}
	b := min(max(2*time.Duration(u.backoff.Load()), minBackoff), maxBackoff)
	u.backoff.Store(int64(b))
	u.until.Store(now + int64(b))
	u.m.penalties.Inc()
	u.m.penalized.Set(1)
}

// limit is how long u has to answer before the next attempt starts: four
// times its smoothed answer time, within the hedge bounds.
func (s *Spread) limit(u *upstream) time.Duration {
	return min(max(4*time.Duration(u.srtt.Load()), s.hedgeMin), s.hedgeMax)
}

// plan lists the upstreams a query tries, in order, at most s.attempts: a
// penalized endpoint whose penalty is over, if this query is the one to try
// it again (alongside the next); the healthy endpoints, from the next in
// the rotation; the penalized ones, the soonest back first; the Service.
func (s *Spread) plan(out []attempt) []attempt {
	var eps []*upstream
	if p := s.endpoints.Load(); p != nil {
		eps = *p
	}
	now := s.clock().UnixNano()
	n := len(eps)
	r := s.rr.Add(1)
	start := 0
	if n > 0 {
		start = int(r % uint32(n))
	}
	// A trial needs a second try beside it; with one try per query, an
	// endpoint whose penalty is over is simply back in the rotation.
	for i := 0; i < n && len(out) == 0 && s.attempts > 1; i++ {
		u := eps[(start+i)%n]
		if until := u.until.Load(); until != 0 && until <= now && u.trial.CompareAndSwap(false, true) {
			out = append(out, attempt{u: u, limit: s.limit(u), trial: true})
		}
	}
	// The healthy ones in turn among themselves, so that an endpoint out of
	// the rotation leaves its share to all the others, not to the next.
	var hbuf [8]*upstream
	healthy := hbuf[:0]
	for _, u := range eps {
		if until := u.until.Load(); until == 0 || s.attempts == 1 && until <= now {
			healthy = append(healthy, u)
		}
	}
	for i, k := 0, len(healthy); i < k && len(out) < s.attempts; i++ {
		u := healthy[(int(r%uint32(k))+i)%k]
		out = append(out, attempt{u: u, limit: s.limit(u)})
	}
	if len(out) < s.attempts {
		var penalized [8]*upstream
		p := penalized[:0]
		for _, u := range eps {
			if u.until.Load() != 0 && !slices.ContainsFunc(out, func(a attempt) bool { return a.u == u }) {
				p = append(p, u)
			}
		}
		slices.SortFunc(p, func(a, b *upstream) int { return int(a.until.Load() - b.until.Load()) })
		for _, u := range p {
			if len(out) == s.attempts {
				break
			}
			out = append(out, attempt{u: u, limit: s.limit(u)})
		}
	}
	// The Service, once at least, then again (another connection, which
	// kube-proxy may send to another endpoint) while nothing else is known.
	for i := 0; len(out) < s.attempts && (i == 0 || n == 0); i++ {
		u := s.service[int(s.rr.Load()+uint32(i))%len(s.service)]
		out = append(out, attempt{u: u, limit: s.limit(u)})
	}
	return out
}

// newUpstream is an upstream at addr with the plugin's connection options.
func (s *Spread) newUpstream(addr string, service bool) *upstream {
	return &upstream{addr: addr, pool: &pool{addr: addr, expire: s.expire}, service: service}
}

// start gives u its metrics.
func (s *Spread) start(u *upstream) {
	u.m = s.m.upstream(u.addr, u.service)
}

// stopUpstream closes u's connections now (those in use, when their
// queries are done).
func stopUpstream(u *upstream) {
	u.pool.close()
}

// fakeWriter is the ResponseWriter of the plugin's own queries (the
// endpoints' lookup): a TCP client, so that the answer's size is not capped.
type fakeWriter struct{ dns.ResponseWriter }

var tcpAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}

func (fakeWriter) RemoteAddr() net.Addr { return tcpAddr }
func (fakeWriter) LocalAddr() net.Addr  { return tcpAddr }
