package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// The scenarios of a bad kube-dns endpoint (docs/reliability.md): the
// cluster runs three CoreDNS endpoints and a fourth on standby, and the
// pods' load asks a new name in every other lookup. In each, with one
// endpoint healthy at every moment, at most 0.1 % of the misses may fail,
// their p99 must stay under 250 ms and none may take a second.
const (
	clusterEndpoints = 3
	missFailPermille = 1
	missP99          = 250 * time.Millisecond
	missSlowest      = time.Second
	maxShare         = 0.60
	// endpointsRefresh is how often the agent looks kube-dns's endpoints
	// up (the built-in Corefile's spread default).
	endpointsRefresh = 5 * time.Second
)

// checkMisses asserts the bounds on the misses of rep and logs them with
// the share of the agent's upstream answers each endpoint gave.
func checkMisses(t *testing.T, s *suite, rep *nodesim.Report, shares map[string]float64) {
	t.Helper()
	m := rep.Only(isMiss)
	failed := len(m.Failed())
	t.Logf("misses: %d, failed %d %v, p50 %s, p99 %s, slowest %s; answers by endpoint: %s",
		len(m.Outcomes), failed, m.FailuresByKind(), m.Percentile(50).Round(100*time.Microsecond),
		m.Percentile(99).Round(100*time.Microsecond), m.Slowest().Round(time.Millisecond), formatShares(shares))
	if len(m.Outcomes) < 1000 {
		t.Fatalf("the load asked %d new names, want over 1,000", len(m.Outcomes))
	}
	if failed*1000 > len(m.Outcomes)*missFailPermille {
		t.Errorf("%d of %d misses failed, want at most 0.1%%: %v", failed, len(m.Outcomes), m.Failed()[:min(failed, 5)])
	}
	if p := m.Percentile(99); p >= missP99 {
		t.Errorf("p99 of the misses %s, want under %s", p, missP99)
	}
	if w := m.Slowest(); w >= missSlowest {
		t.Errorf("the slowest miss took %s, want under %s", w, missSlowest)
	}
	// Two endpoints at least are healthy at every moment: a bad one's share
	// goes to all the others, so none answers more than 60 %.
	for to, share := range shares {
		if share > maxShare {
			t.Errorf("endpoint %s answered %.1f%% of the misses, want at most %.0f%%: %s", to, 100*share, 100*maxShare, formatShares(shares))
		}
	}
}

// endpointAnswers is the agent's count of the answers each upstream gave
// it first, by address.
func (s *suite) endpointAnswers(t *testing.T) map[string]float64 {
	t.Helper()
	series, err := nodesim.MetricSeries(t.Context(), s.c.Node.NS, agentMetrics, "coredns_spread_answers_total")
	if err != nil {
		t.Fatal(err)
	}
	return sumByTo(series)
}

func sumByTo(series []nodesim.Sample) map[string]float64 {
	out := map[string]float64{}
	for _, sm := range series {
		out[sm.Labels["to"]] += sm.Value
	}
	return out
}

// answerCounter follows the agent's answers per upstream while a load
// runs, reading them every 500 ms: a series that went away with its
// endpoint and came back counts on from where it was.
type answerCounter struct {
	last, total map[string]float64
}

func (c *answerCounter) read(now map[string]float64) {
	for k, v := range now {
		d := v - c.last[k]
		if d < 0 {
			d = v
		}
		c.total[k] += d
	}
	c.last = now
}

func (c *answerCounter) shares() map[string]float64 {
	var sum float64
	for _, v := range c.total {
		sum += v
	}
	out := map[string]float64{}
	for k, v := range c.total {
		out[k] = v / max(sum, 1)
	}
	return out
}

func formatShares(shares map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(shares)) {
		parts = append(parts, fmt.Sprintf("%s %.1f%%", k, 100*shares[k]))
	}
	return strings.Join(parts, ", ")
}

// upstreamLoad runs the pods' load with a miss in every other lookup and
// checks the misses' bounds.
func (s *suite) upstreamLoad(t *testing.T, d time.Duration, faults ...fault) *nodesim.Report {
	t.Helper()
	c := &answerCounter{last: s.endpointAnswers(t), total: map[string]float64{}}
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
			}
			if now, err := nodesim.MetricSeries(context.Background(), s.c.Node.NS, agentMetrics, "coredns_spread_answers_total"); err == nil {
				c.read(sumByTo(now))
			}
		}
	}()
	rep := s.podLoad(t, d, 2, faults...)
	close(done)
	<-sampled
	c.read(s.endpointAnswers(t))
	checkMisses(t, s, rep, c.shares())
	return rep
}

// kubeDNSRequests is what each active CoreDNS endpoint counted.
func (s *suite) kubeDNSRequests(t *testing.T) []float64 {
	t.Helper()
	var out []float64
	for _, d := range s.c.CoreDNS[:clusterEndpoints] {
		v, err := d.Requests(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// With every endpoint healthy each gets a fair share of the misses,
// counted by the endpoints themselves, at the scenarios' rate and at a
// low one.
func scenarioMissesSpread(t *testing.T, s *suite) {
	for _, rate := range []int{clusterRate, 20} {
		before := s.kubeDNSRequests(t)
		spec := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: rate, Duration: 10 * time.Second, Names: loadNames, MissEvery: 2, Timeout: 2 * time.Second, Workers: 8}
		rep := s.c.Node.Load(t.Context(), spec)
		after := s.kubeDNSRequests(t)
		var total float64
		for i := range after {
			total += after[i] - before[i]
		}
		var shares []string
		for i := range after {
			share := (after[i] - before[i]) / max(total, 1)
			shares = append(shares, fmt.Sprintf("%.1f%%", 100*share))
			if share < 0.20 || share > 0.46 {
				t.Errorf("at %d q/s endpoint %s received %.1f%% of %.0f upstream queries, want 20-46%%", rate, s.c.CoreDNS[i].Name, 100*share, total)
			}
		}
		t.Logf("at %d q/s: %.0f upstream queries, shares %s; %s", rate, total, strings.Join(shares, " "), rep.Summary())
		if len(rep.Failed()) != 0 {
			t.Errorf("%d queries failed: %v", len(rep.Failed()), rep.FailuresByKind())
		}
	}
}

// An endpoint whose node went away: it drops every packet while still
// listed for 40 s, then leaves the EndpointSlice.
func scenarioEndpointSilent(t *testing.T, s *suite) {
	ctx := t.Context()
	d := s.c.CoreDNS[1]
	s.upstreamLoad(t, 48*time.Second,
		fault{at: 2 * time.Second, do: func(t *testing.T) {
			if err := d.SetSilent(ctx, true); err != nil {
				t.Fatal(err)
			}
		}},
		fault{at: 42 * time.Second, do: func(t *testing.T) {
			if err := s.c.RemoveEndpoint(ctx, 1); err != nil {
				t.Fatal(err)
			}
		}})
	if err := d.SetSilent(ctx, false); err != nil {
		t.Fatal(err)
	}
	s.restore(t, 1)
}

// restore puts endpoint i back once it is ready, and waits until the
// agent's next lookup has seen it.
func (s *suite) restore(t *testing.T, i int) {
	t.Helper()
	ctx := t.Context()
	if err := s.c.CoreDNS[i].WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.c.RestoreEndpoint(ctx, i); err != nil {
		t.Fatal(err)
	}
	time.Sleep(endpointsRefresh + time.Second)
}

// An overloaded endpoint: CoreDNS starved, answering in bursts every
// 1.5 s, for 15 s.
func scenarioEndpointOverloaded(t *testing.T, s *suite) {
	var end func()
	s.upstreamLoad(t, 20*time.Second,
		fault{at: 2 * time.Second, do: func(*testing.T) { end = s.c.CoreDNS[2].Overload(1500*time.Millisecond, 30*time.Second) }},
		fault{at: 17 * time.Second, do: func(*testing.T) { end() }})
}

// A rolling restart of every endpoint, as a Deployment's does it: taken out
// of the EndpointSlice, stopped, started, put back once ready; the next one
// once the agent has seen it back.
func scenarioEndpointsRollingRestart(t *testing.T, s *suite) {
	ctx := t.Context()
	s.upstreamLoad(t, 40*time.Second, fault{at: 2 * time.Second, do: func(t *testing.T) {
		for i, d := range s.c.CoreDNS[:clusterEndpoints] {
			if err := s.c.RemoveEndpoint(ctx, i); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if err := d.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			s.restore(t, i)
		}
	}})
}

// An endpoint added to the slice receives misses within the agent's lookup
// period.
func scenarioEndpointAdded(t *testing.T, s *suite) {
	ctx := t.Context()
	d := s.c.CoreDNS[clusterEndpoints]
	base, err := d.Requests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	s.upstreamLoad(t, 15*time.Second, fault{at: 2 * time.Second, do: func(t *testing.T) {
		start := time.Now()
		if err := s.c.RestoreEndpoint(ctx, clusterEndpoints); err != nil {
			t.Fatal(err)
		}
		for deadline := start.Add(3 * endpointsRefresh); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if v, err := d.Requests(ctx); err == nil && v > base+10 {
				took = time.Since(start)
				return
			}
		}
	}})
	if took == 0 {
		t.Fatalf("the added endpoint %s received no misses within %s", d.Name, 3*endpointsRefresh)
	}
	t.Logf("the added endpoint received misses %s after it was added", took.Round(100*time.Millisecond))
	if took > endpointsRefresh+2*time.Second {
		t.Errorf("the added endpoint received misses %s after it was added, want within the %s lookup period", took, endpointsRefresh)
	}
	// The cluster's other scenarios run on three endpoints.
	if err := s.c.RemoveEndpoint(ctx, clusterEndpoints); err != nil {
		t.Fatal(err)
	}
	time.Sleep(endpointsRefresh + time.Second)
}
