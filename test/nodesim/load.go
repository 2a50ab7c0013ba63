package nodesim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// LoadSpec describes a steady, bounded load from the pods: lookups as glibc
// does them (A and AAAA sent together from one UDP socket), some over TCP,
// mostly for a fixed set of names (cache hits) and some for names never
// asked before (cache misses).
type LoadSpec struct {
	// Server is where the pods send queries (the kube-dns ClusterIP).
	Server netip.Addr
	// Rate is queries per second over all pods (a lookup is two queries).
	Rate int
	// Duration bounds the load; it stops by itself.
	Duration time.Duration
	// HitNames is the number of names cycled through (default 50).
	HitNames int
	// Names, if set, are the names cycled through instead (fully
	// qualified), for a kube-dns that answers only names that exist.
	Names []string
	// MissEvery makes every Nth lookup ask a new name (0: never).
	MissEvery int
	// TCPEvery makes every Nth lookup use TCP (0: never).
	TCPEvery int
	// Timeout is how long a query may take before it counts as failed
	// (default 1s).
	Timeout time.Duration
	// Workers per pod, each a thread in the pod's namespace (default 64).
	Workers int
}

// Outcome kinds.
const (
	OK          = "ok"
	Timeout     = "timeout"
	ServFail    = "servfail"
	Refused     = "refused"
	ConnRefused = "connection refused"
	ConnReset   = "connection reset"
	OtherError  = "error"
)

// Outcome is one query's result.
type Outcome struct {
	Start   time.Time
	Latency time.Duration
	Kind    string
	Proto   string
	Name    string
	Qtype   uint16
}

// Report holds every outcome of a load run.
type Report struct {
	Start, End time.Time
	// Duration is how long queries were sent for.
	Duration time.Duration
	Outcomes []Outcome
}

// Failed returns the outcomes that are not OK.
func (r *Report) Failed() []Outcome {
	var out []Outcome
	for _, o := range r.Outcomes {
		if o.Kind != OK {
			out = append(out, o)
		}
	}
	return out
}

// Only is the report of the outcomes keep keeps (the misses, say).
func (r *Report) Only(keep func(Outcome) bool) *Report {
	out := *r
	out.Outcomes = nil
	for _, o := range r.Outcomes {
		if keep(o) {
			out.Outcomes = append(out.Outcomes, o)
		}
	}
	return &out
}

// FailuresByKind counts failures per kind.
func (r *Report) FailuresByKind() map[string]int {
	m := map[string]int{}
	for _, o := range r.Failed() {
		m[o.Kind]++
	}
	return m
}

// Slowest returns the longest latency of an answered query.
func (r *Report) Slowest() time.Duration {
	var max time.Duration
	for _, o := range r.Outcomes {
		if o.Kind == OK && o.Latency > max {
			max = o.Latency
		}
	}
	return max
}

// Rate returns the queries sent per second.
func (r *Report) Rate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(len(r.Outcomes)) / r.Duration.Seconds()
}

// Percentile returns the p-th percentile latency of answered queries.
func (r *Report) Percentile(p float64) time.Duration {
	var lat []time.Duration
	for _, o := range r.Outcomes {
		if o.Kind == OK {
			lat = append(lat, o.Latency)
		}
	}
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[int(float64(len(lat)-1)*p/100)]
}

// Summary is one line about the run.
func (r *Report) Summary() string {
	return fmt.Sprintf("%d queries in %s (%.0f/s), %d failed %v, p50 %s, p99 %s, slowest %s",
		len(r.Outcomes), r.End.Sub(r.Start).Round(time.Millisecond), r.Rate(), len(r.Failed()), r.FailuresByKind(),
		r.Percentile(50).Round(time.Microsecond), r.Percentile(99).Round(time.Microsecond), r.Slowest().Round(time.Microsecond))
}

type lookup struct {
	seq   int
	proto string
	name  string
}

// Load runs spec from every pod and returns when it is done. It never runs
// longer than spec.Duration plus one timeout.
func (n *Node) Load(ctx context.Context, spec LoadSpec) *Report {
	if spec.HitNames == 0 {
		spec.HitNames = 50
	}
	if spec.Timeout == 0 {
		spec.Timeout = time.Second
	}
	if spec.Workers == 0 {
		spec.Workers = 64
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Duration)
	defer cancel()
	var (
		mu  sync.Mutex
		rep = &Report{Start: time.Now(), Duration: spec.Duration}
		wg  sync.WaitGroup
	)
	record := func(o Outcome) {
		mu.Lock()
		rep.Outcomes = append(rep.Outcomes, o)
		mu.Unlock()
	}
	jobs := make([]chan lookup, len(n.Pods))
	for i, p := range n.Pods {
		jobs[i] = make(chan lookup, spec.Rate)
		for range spec.Workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				worker(p.NS, spec, jobs[i], record)
			}()
		}
	}
	// Pace lookups: each is two queries over UDP, one over TCP.
	perLookup := 2.0
	if spec.TCPEvery > 0 {
		perLookup -= 1 / float64(spec.TCPEvery)
	}
	lookups := max(float64(spec.Rate)/perLookup, 1)
	tick := time.NewTicker(time.Duration(float64(time.Second) / lookups))
	var seq atomic.Int64
	dispatch := func(s int) {
		l := lookup{seq: s, proto: "udp", name: fmt.Sprintf("hit-%d.default.svc.cluster.local.", s%spec.HitNames)}
		if len(spec.Names) > 0 {
			l.name = spec.Names[s%len(spec.Names)]
		}
		if spec.MissEvery > 0 && s%spec.MissEvery == 0 {
			l.name = fmt.Sprintf("miss-%d-%d.default.svc.cluster.local.", rep.Start.UnixNano()%1e6, s)
		}
		if spec.TCPEvery > 0 && s%spec.TCPEvery == 1%spec.TCPEvery {
			l.proto = "tcp"
		}
		select {
		case jobs[s%len(jobs)] <- l:
		default: // every worker busy and the queue full: skip, do not pile up
		}
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case now := <-tick.C:
			// Catch up on the ticks a busy machine dropped: the rate holds.
			due := int64(now.Sub(rep.Start).Seconds() * lookups)
			for seq.Load() < due {
				dispatch(int(seq.Add(1)))
			}
		}
	}
	tick.Stop()
	for _, j := range jobs {
		close(j)
	}
	wg.Wait()
	rep.End = time.Now()
	slices.SortFunc(rep.Outcomes, func(a, b Outcome) int { return a.Start.Compare(b.Start) })
	return rep
}

// worker runs lookups on a thread that stays in namespace ns for its life
// (the thread is discarded, not reused, when the worker ends).
func worker(ns string, spec LoadSpec, jobs <-chan lookup, record func(Outcome)) {
	runtime.LockOSThread()
	h, err := netns.GetFromName(ns)
	if err != nil {
		return
	}
	err = netns.Set(h)
	h.Close()
	if err != nil {
		return
	}
	server := net.JoinHostPort(spec.Server.String(), "53")
	for l := range jobs {
		if l.proto == "tcp" {
			record(tcpLookup(server, l.name, spec.Timeout))
			continue
		}
		for _, o := range udpLookup(server, l.name, spec.Timeout) {
			record(o)
		}
	}
}

// udpLookup sends A and AAAA for name at once from one socket, as glibc
// does, and waits for both answers.
func udpLookup(server, name string, timeout time.Duration) []Outcome {
	start := time.Now()
	out := []Outcome{
		{Start: start, Proto: "udp", Name: name, Qtype: dns.TypeA, Kind: Timeout, Latency: timeout},
		{Start: start, Proto: "udp", Name: name, Qtype: dns.TypeAAAA, Kind: Timeout, Latency: timeout},
	}
	conn, err := net.Dial("udp", server)
	if err != nil {
		out[0].Kind, out[1].Kind = OtherError, OtherError
		return out
	}
	defer conn.Close()
	c := &dns.Conn{Conn: conn}
	ids := map[uint16]int{}
	for i := range out {
		m := new(dns.Msg)
		m.SetQuestion(name, out[i].Qtype)
		// Two random IDs are the same once in 65,536 lookups; the answers
		// would then be told apart by nothing, and one reported lost.
		for _, dup := ids[m.Id]; dup; _, dup = ids[m.Id] {
			m.Id = dns.Id()
		}
		ids[m.Id] = i
		if err := c.WriteMsg(m); err != nil {
			out[i].Kind = classify(nil, err)
		}
	}
	_ = c.SetReadDeadline(start.Add(timeout))
	for pending := 2; pending > 0; {
		r, err := c.ReadMsg()
		if err != nil {
			kind := classify(nil, err)
			if kind == ConnRefused {
				// One refusal answers the whole lookup.
				for i := range out {
					if out[i].Kind == Timeout {
						out[i].Kind, out[i].Latency = kind, time.Since(start)
					}
				}
			}
			return out
		}
		i, ok := ids[r.Id]
		if !ok || out[i].Kind != Timeout {
			continue
		}
		out[i].Kind, out[i].Latency = classify(r, nil), time.Since(start)
		pending--
	}
	return out
}

func tcpLookup(server, name string, timeout time.Duration) Outcome {
	start := time.Now()
	o := Outcome{Start: start, Proto: "tcp", Name: name, Qtype: dns.TypeA, Kind: Timeout, Latency: timeout}
	conn, err := net.DialTimeout("tcp", server, timeout)
	if err != nil {
		o.Kind = classify(nil, err)
		if o.Kind != Timeout {
			o.Latency = time.Since(start)
		}
		return o
	}
	defer conn.Close()
	c := &dns.Conn{Conn: conn}
	_ = c.SetDeadline(start.Add(timeout))
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	if err := c.WriteMsg(m); err != nil {
		o.Kind = classify(nil, err)
		return o
	}
	r, err := c.ReadMsg()
	o.Kind = classify(r, err)
	if o.Kind != Timeout {
		o.Latency = time.Since(start)
	}
	return o
}

func classify(r *dns.Msg, err error) string {
	var ne net.Error
	switch {
	case err == nil && r != nil && (r.Rcode == dns.RcodeSuccess || r.Rcode == dns.RcodeNameError):
		return OK
	case err == nil && r != nil && r.Rcode == dns.RcodeServerFailure:
		return ServFail
	case err == nil && r != nil && r.Rcode == dns.RcodeRefused:
		return Refused
	case errors.Is(err, syscall.ECONNREFUSED):
		return ConnRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ConnReset
	case errors.As(err, &ne) && ne.Timeout():
		return Timeout
	default:
		return OtherError
	}
}
