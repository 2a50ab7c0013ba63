package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// The reliability scenarios: a steady pod load of at least 400 queries/s
// (A+AAAA from one socket, some TCP, hits and misses), one fault at a known
// time, and the bound each scenario promises. With RELIABILITY_DOC set
// (make reliability), the measured table is written into that file.

// podRate is the least pod load every scenario runs under; the load is
// offered 5 % above it so that pacing jitter does not take it below.
const podRate = 400

func loadSpec(d time.Duration) nodesim.LoadSpec {
	return nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: podRate * 105 / 100, Duration: d, MissEvery: 10, TCPEvery: 8}
}

// fault is something done to the node at a time into the load.
type fault struct {
	at time.Duration
	do func(t *testing.T)
}

// scenario runs the load with the faults and returns the report.
func scenario(t *testing.T, n *nodesim.Node, d time.Duration, faults ...fault) *nodesim.Report {
	t.Helper()
	return scenarioWith(t, n, loadSpec(d), faults...)
}

// tcpHeavy is the load with one lookup in three over TCP, for the scenarios
// that promise zero failures across a change of who serves.
func tcpHeavy(d time.Duration) nodesim.LoadSpec {
	s := loadSpec(d)
	s.TCPEvery = 3
	return s
}

// scenarioWith runs spec with the faults and returns the report.
func scenarioWith(t *testing.T, n *nodesim.Node, spec nodesim.LoadSpec, faults ...fault) *nodesim.Report {
	t.Helper()
	done := make(chan *nodesim.Report)
	start := time.Now()
	go func() { done <- n.Load(context.Background(), spec) }()
	for _, f := range faults {
		time.Sleep(time.Until(start.Add(f.at)))
		f.do(t)
	}
	rep := <-done
	t.Log(rep.Summary())
	if rep.Rate() < podRate {
		t.Errorf("the load reached %.0f queries/s, want at least %d", rep.Rate(), podRate)
	}
	return rep
}

var (
	rowsMu sync.Mutex
	rows   []string
)

// row records the scenario's row of the reliability table; with
// RELIABILITY_DOC set, TestMain writes the rows into that file.
func row(t *testing.T, name string, rep *nodesim.Report, back, bound string) {
	if t.Failed() {
		return
	}
	kinds := []string{}
	for k, v := range rep.FailuresByKind() {
		kinds = append(kinds, fmt.Sprintf("%d %s", v, k))
	}
	failed := fmt.Sprint(len(rep.Failed()))
	if len(kinds) > 0 {
		failed += " (" + strings.Join(kinds, ", ") + ")"
	}
	rowsMu.Lock()
	defer rowsMu.Unlock()
	rows = append(rows, fmt.Sprintf("| %s | %d | %.0f | %s | %s | %s | %s |", name, len(rep.Outcomes), rep.Rate(), failed,
		rep.Slowest().Round(time.Millisecond), back, bound))
}

// writeReliabilityDoc replaces the table between the markers in path.
func writeReliabilityDoc(path string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const begin, end = "<!-- table -->", "<!-- /table -->"
	i, j := strings.Index(string(doc), begin), strings.Index(string(doc), end)
	if i < 0 || j < i {
		return fmt.Errorf("%s lacks the %s and %s markers", path, begin, end)
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nMeasured %s on %d CPUs, kernel %s, pod load %d queries/s.\n\n",
		begin, time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), strings.TrimSpace(string(kernel)), podRate)
	b.WriteString("| scenario | queries | per second | failed | slowest answer | back on the agent | bound asserted |\n|---|---|---|---|---|---|---|\n")
	rowsMu.Lock()
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	rowsMu.Unlock()
	return os.WriteFile(path, []byte(string(doc[:i])+b.String()+string(doc[j:])), 0o644)
}

// kill is the window of one SIGKILL: from the signal until the process was
// seen gone (its sockets closed).
type kill struct{ signalled, gone time.Time }

// start is the window of one agent start: from the command until it serves.
type start struct{ begun, serving time.Time }

// resetAtStart reports whether o is a TCP connection made through DNAT
// while no agent listened and reset when an agent's socket appeared under it
// (the only way an agent starting can fail a query). Where a watchdog runs
// and fenced the dead agent off, the path changes again when it sees the
// agent answer and removes the fence, within its probe interval of the
// agent serving (250 ms; a second is allowed): a connection made through
// DNAT until then is reset too.
func resetAtStart(o nodesim.Outcome, starts []start) bool {
	for _, s := range starts {
		if o.Proto == "tcp" && o.Kind == nodesim.ConnReset && o.Start.After(s.begun.Add(-time.Second)) && o.Start.Before(s.serving.Add(time.Second)) {
			return true
		}
	}
	return false
}

// killAgent sends SIGKILL and waits until the agent is gone.
func killAgent(t *testing.T, a *nodesim.Agent) kill {
	k := kill{signalled: time.Now()}
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	k.gone = time.Now()
	return k
}

// notInFlight returns the failures that were not in flight at one of the
// kills: sent more than a timeout before the signal, or after the process
// was gone.
func notInFlight(rep *nodesim.Report, starts []start, kills ...kill) []nodesim.Outcome {
	var out []nodesim.Outcome
	for _, o := range rep.Failed() {
		inFlight := resetAtStart(o, starts)
		for _, k := range kills {
			if !o.Start.After(k.gone) && o.Start.Add(time.Second).After(k.signalled) {
				inFlight = true
			}
		}
		if !inFlight {
			out = append(out, o)
		}
	}
	return out
}

// fromPodsBetween counts queries that reached kube-dns straight from a pod
// (bypassing the agent) in [from, to), and returns the last one's time.
func fromPodsBetween(n *nodesim.Node, from, to time.Time) (int, time.Time) {
	count, last := 0, time.Time{}
	for _, ts := range n.FromPods() {
		if !ts.Before(from) && ts.Before(to) {
			count++
			last = ts
		}
	}
	return count, last
}

// SIGTERM under load: zero failed queries, exit 0 within the grace period,
// nothing left behind.
func TestScenarioGracefulStop(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	a := startAgent(t, n, "--sync-interval=1s")
	var took time.Duration
	rep := scenarioWith(t, n, tcpHeavy(4*time.Second), fault{at: 2 * time.Second, do: func(t *testing.T) {
		start := time.Now()
		code, err := a.Stop(stopTimeout)
		took = time.Since(start)
		if err != nil || code != 0 {
			t.Errorf("exit %d, %v", code, err)
		}
	}})
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("%d queries failed across a graceful stop, want 0: %v", len(f), f[:min(len(f), 5)])
	}
	if took > 30*time.Second {
		t.Errorf("stopping took %s, more than the 30 s grace period", took)
	}
	if got := countRules(ruleset(t, n)); got != 0 {
		t.Errorf("%d rules left", got)
	}
	if addrs, _ := n.Addrs(t.Context(), "nodelocaldns"); addrs != "" {
		t.Errorf("interface left: %q", addrs)
	}
	row(t, "graceful stop (SIGTERM), one lookup in three over TCP", rep, "n/a (stopped in "+took.Round(time.Millisecond).String()+")", "0 failed")
}

// SIGKILL under load, as the OOM killer does it: only the queries in flight
// at the kill fail; pods fall back to kube-dns by themselves; a restarted
// agent takes the traffic back.
func TestScenarioCrashAndRestart(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	a := startAgent(t, n, "--sync-interval=1s")
	var (
		k         kill
		s         start
		restarted time.Time
	)
	rep := scenario(t, n, 5*time.Second,
		fault{at: 1500 * time.Millisecond, do: func(t *testing.T) { k = killAgent(t, a) }},
		fault{at: 3 * time.Second, do: func(t *testing.T) {
			s.begun = time.Now()
			startAgent(t, n, "--sync-interval=1s")
			restarted = time.Now()
			s.serving = restarted
		}})
	if bad := notInFlight(rep, []start{s}, k); len(bad) != 0 {
		t.Errorf("%d failures were not in flight at the kill: %v", len(bad), bad[:min(len(bad), 5)])
	}
	during, _ := fromPodsBetween(n, k.gone, restarted)
	if during == 0 {
		t.Error("no pod query reached kube-dns while the agent was dead: the fallback did not happen")
	}
	after, last := fromPodsBetween(n, restarted, time.Now())
	if after != 0 {
		t.Errorf("%d pod queries bypassed the restarted agent, the last %s after it served", after, last.Sub(restarted))
	}
	row(t, "crash (SIGKILL), restart 1.5 s later", rep, "at once when serving again ("+fmt.Sprint(after)+" queries bypassed it)",
		"failures only in flight at the kill (and TCP connections open when the agent comes back)")
}

// A crash loop (killed every 400 ms) leaves the node resolving through
// kube-dns; only queries in flight at each kill fail.
func TestScenarioCrashLoop(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	var kills []kill
	var (
		faults []fault
		starts []start
	)
	for i := range 5 {
		faults = append(faults, fault{at: time.Duration(300+i*700) * time.Millisecond, do: func(t *testing.T) {
			begun := time.Now()
			a, err := n.StartAgent(binary, "--sync-interval=1s")
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(400 * time.Millisecond)
			starts = append(starts, start{begun: begun, serving: time.Now()})
			kills = append(kills, killAgent(t, a))
		}})
	}
	rep := scenario(t, n, 4*time.Second, faults...)
	if bad := notInFlight(rep, starts, kills...); len(bad) != 0 {
		t.Errorf("%d failures were not in flight at a kill: %v", len(bad), bad[:min(len(bad), 5)])
	}
	row(t, "crash loop (5 kills, 400 ms apart)", rep, "n/a", "failures only in flight at each kill (and TCP connections open when an agent comes back)")
}

// A rolling upgrade: a new agent starts beside the old one (SO_REUSEPORT on
// the same addresses), then the old one gets SIGTERM. No query fails and no
// pod query ever bypasses the agents: the diversion is never removed.
func TestScenarioRollingUpgrade(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	old := startAgent(t, n, "--sync-interval=1s")
	var next *nodesim.Agent
	start := time.Now()
	rep := scenarioWith(t, n, tcpHeavy(5*time.Second),
		fault{at: 1500 * time.Millisecond, do: func(t *testing.T) { next = startAgent(t, n, "--sync-interval=1s") }},
		fault{at: 2500 * time.Millisecond, do: func(t *testing.T) {
			if code, err := old.Stop(stopTimeout); err != nil || code != 0 {
				t.Errorf("old agent: exit %d, %v", code, err)
			}
		}})
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("%d queries failed across the upgrade, want 0: %v", len(f), f[:min(len(f), 5)])
	}
	if bypassed, _ := fromPodsBetween(n, start, time.Now()); bypassed != 0 {
		t.Errorf("%d pod queries bypassed the agents during the upgrade, want 0", bypassed)
	}
	if !strings.Contains(old.Output(), "handing over") {
		t.Errorf("old agent did not hand over:\n%s", old.Output())
	}
	if got := countRules(ruleset(t, n)); got != rulesPerIP {
		t.Errorf("after the upgrade %d rules, want %d", got, rulesPerIP)
	}
	if next.Exited() {
		t.Fatal("new agent exited")
	}
	row(t, "rolling upgrade (new agent beside the old, then SIGTERM to the old), one lookup in three over TCP", rep, "never left (0 queries bypassed)", "0 failed")
}

// Someone flushes the raw table under load: DNS keeps working through DNAT
// meanwhile and the rules are back within the sync interval. Only a lookup
// in flight at the instant the rules go or come back can fail: a TCP
// connection then changes path mid-stream and is reset, and a UDP answer
// from the agent sent just after the flush can clash in conntrack with the
// same socket's next query, already DNAT'ed, and be dropped.
func TestScenarioRulesFlushed(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	startAgent(t, n, "--sync-interval=1s")
	var (
		flushed time.Time
		what    string
	)
	rep := scenario(t, n, 4*time.Second, fault{at: 1500 * time.Millisecond, do: func(t *testing.T) {
		flushed = time.Now()
		what = removeDiversion(t, n)
	}})
	// The rules go at the flush and come back within the 1 s sync interval.
	for _, o := range rep.Failed() {
		if o.Start.Before(flushed.Add(-time.Second)) || o.Start.After(flushed.Add(2*time.Second)) {
			t.Errorf("failure away from the instants the rules changed: %+v", o)
		}
	}
	if f := rep.Failed(); len(f) > 4 {
		t.Errorf("%d queries failed, more than the few in flight when the rules changed: %v", len(f), f[:5])
	}
	n1, last := fromPodsBetween(n, flushed, time.Now())
	back := last.Sub(flushed)
	if n1 == 0 {
		t.Error("no pod query went through DNAT after the flush: the test did not flush anything")
	}
	if back > 2*time.Second {
		t.Errorf("pods were back on the agent %s after the flush, want within the 1 s sync interval (+1 s)", back)
	}
	row(t, "the agent's NOTRACK rules removed by someone else (`"+what+"`, sync interval 1 s)", rep, back.Round(time.Millisecond).String(),
		"only lookups in flight when the rules went or came back (at most 4); back within the sync interval")
}

// A hung agent (SIGSTOP: its sockets stay bound, so the kernel keeps
// sending it queries) is fenced off by the watchdog within 2 s and the node
// is put back on it within 2 s of it answering again (SIGCONT).
func TestScenarioHungAgentWatchdog(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	a := startAgent(t, n, "--sync-interval=1s")
	w := startWatchdog(t, n)
	var stopped, resumed time.Time
	rep := scenario(t, n, 7*time.Second,
		fault{at: 1500 * time.Millisecond, do: func(t *testing.T) {
			stopped = time.Now()
			_ = a.Signal(syscall.SIGSTOP)
		}},
		fault{at: 4500 * time.Millisecond, do: func(t *testing.T) {
			resumed = time.Now()
			_ = a.Signal(syscall.SIGCONT)
		}})
	fromPods := n.FromPods()
	var off, back time.Time
	for _, ts := range fromPods {
		if ts.After(stopped) && off.IsZero() {
			off = ts
		}
		if ts.After(resumed) {
			back = ts
		}
	}
	if off.IsZero() {
		t.Fatal("no pod query reached kube-dns while the agent was stopped: the watchdog did not fence it off")
	}
	offAfter := off.Sub(stopped)
	backAfter := time.Duration(0)
	if !back.IsZero() {
		backAfter = back.Sub(resumed)
	}
	t.Logf("off the agent %s after it stopped, back on it %s after it resumed", offAfter, backAfter)
	if offAfter > 2*time.Second {
		t.Errorf("node taken off the silent agent after %s, want within 2 s", offAfter)
	}
	if backAfter > 2*time.Second {
		t.Errorf("node back on the agent %s after it answered again, want within 2 s", backAfter)
	}
	for _, o := range rep.Failed() {
		silent := !o.Start.Before(stopped.Add(-time.Second)) && !o.Start.After(off)
		// A TCP connection made through DNAT while fenced off and still open
		// when the fence goes is reset, as with any change of the rules.
		switching := o.Proto == "tcp" && o.Kind == nodesim.ConnReset && o.Start.After(resumed.Add(-time.Second)) && o.Start.Before(resumed.Add(time.Second))
		if !silent && !switching {
			t.Errorf("failure outside the silent window: %+v", o)
		}
	}
	if !strings.Contains(w.Output(), "agent silent") || !strings.Contains(w.Output(), "node back on it") {
		t.Errorf("watchdog did not log the fence and its removal:\n%s", w.Output())
	}
	row(t, "hung agent (SIGSTOP for 3 s), watchdog", rep,
		fmt.Sprintf("off %s after it went silent, back %s after it answered", offAfter.Round(time.Millisecond), backAfter.Round(time.Millisecond)),
		"off within 2 s, back within 2 s; failures only while silent (and TCP connections open when the fence goes)")
}

// The watchdog dying changes nothing: no failure, no query leaves the agent.
func TestScenarioWatchdogKilled(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	startAgent(t, n, "--sync-interval=1s")
	w := startWatchdog(t, n)
	start := time.Now()
	rep := scenario(t, n, 3*time.Second, fault{at: 1500 * time.Millisecond, do: func(t *testing.T) { killAgent(t, w) }})
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("%d queries failed when the watchdog died, want 0", len(f))
	}
	if bypassed, _ := fromPodsBetween(n, start, time.Now()); bypassed != 0 {
		t.Errorf("%d pod queries left the agent when the watchdog died, want 0", bypassed)
	}
	row(t, "watchdog killed (SIGKILL)", rep, "never left (0 queries bypassed)", "0 failed")
}

// isMiss reports whether the query was for a name asked once (a cache miss).
func isMiss(o nodesim.Outcome) bool { return strings.HasPrefix(o.Name, "miss-") }

// Every kube-dns endpoint stops answering for 4.5 s. Cached names keep being
// answered, also after they expire (serve-stale); uncached names get
// SERVFAIL in under 2 s rather than a client timeout; the watchdog does not
// mistake the outage for a hung agent; everything recovers by itself.
func TestScenarioKubeDNSDown(t *testing.T) {
	// A 1 s TTL (cached for the cache's 5 s minimum) makes the cached names
	// expire during the outage.
	n := newNode(t, nodesim.Options{TTL: 1})
	startAgent(t, n, "--sync-interval=1s")
	w := startWatchdog(t, n)
	spec := loadSpec(9 * time.Second)
	spec.Timeout = 3 * time.Second // long enough to see SERVFAIL arrive
	var down, up time.Time
	done := make(chan *nodesim.Report)
	go func() { done <- n.Load(context.Background(), spec) }()
	time.Sleep(1500 * time.Millisecond)
	down = time.Now()
	for _, e := range n.Endpoints {
		e.DNS.SetDown(true)
	}
	time.Sleep(4500 * time.Millisecond)
	up = time.Now()
	for _, e := range n.Endpoints {
		e.DNS.SetDown(false)
	}
	rep := <-done
	t.Log(rep.Summary())
	var servfails int
	var slowestFail time.Duration
	for _, o := range rep.Failed() {
		switch {
		case !isMiss(o):
			t.Errorf("a cached name failed during the outage: %+v", o)
		case o.Kind != nodesim.ServFail:
			t.Errorf("an uncached name got %s, want SERVFAIL: %+v", o.Kind, o)
		case o.Latency >= 2*time.Second:
			t.Errorf("SERVFAIL took %s, want under 2 s", o.Latency)
		case o.Start.Before(down.Add(-2*time.Second)) || o.Start.After(up):
			t.Errorf("failure outside the outage: %+v", o)
		}
		servfails++
		slowestFail = max(slowestFail, o.Latency)
	}
	if servfails == 0 {
		t.Error("no uncached name failed: the outage did not happen")
	}
	var hitsDuring int
	for _, o := range rep.Outcomes {
		if !isMiss(o) && o.Kind == nodesim.OK && o.Start.After(down.Add(4*time.Second)) && o.Start.Before(up) {
			hitsDuring++
		}
	}
	if hitsDuring == 0 {
		t.Error("no cached name was answered after it expired during the outage: serve-stale not shown")
	}
	if strings.Contains(w.Output(), "agent silent") {
		t.Errorf("the watchdog fenced the agent off during a kube-dns outage:\n%s", w.Output())
	}
	t.Logf("%d SERVFAIL for uncached names (slowest %s); %d cached names answered after they expired", servfails, slowestFail, hitsDuring)
	row(t, "kube-dns down (all endpoints, 4.5 s)", rep, "n/a (never left)",
		"cached names 0 failed (served stale); uncached: SERVFAIL under 2 s, no timeout")
}

// One of two kube-dns endpoints stops answering; kube-proxy drops it 2 s
// later (readiness). Cached names never fail; uncached names fail only until
// the forwarder has timed out on the dead endpoint after kube-proxy dropped
// it.
func TestScenarioKubeDNSEndpointDown(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	startAgent(t, n, "--sync-interval=1s")
	var down, removed time.Time
	rep := scenario(t, n, 6*time.Second,
		fault{at: 1500 * time.Millisecond, do: func(t *testing.T) {
			down = time.Now()
			n.Endpoints[0].DNS.SetDown(true)
		}},
		fault{at: 3500 * time.Millisecond, do: func(t *testing.T) {
			if err := n.RemoveEndpoint(t.Context(), 0); err != nil {
				t.Fatal(err)
			}
			removed = time.Now()
		}})
	// The agent asks the endpoints in turn and the next one when the silent
	// one has not answered within 100 ms: no miss fails or waits for a
	// read timeout.
	for _, o := range rep.Failed() {
		t.Errorf("failed %s after the endpoint went silent (removed %s after): %+v", o.Start.Sub(down), removed.Sub(down), o)
	}
	if w := rep.Only(isMiss).Slowest(); w >= 500*time.Millisecond {
		t.Errorf("the slowest miss took %s, want under 500 ms (the hedge, not the 900 ms read timeout)", w)
	}
	row(t, "one kube-dns endpoint silent, dropped by kube-proxy 2 s later", rep, "n/a (never left)",
		"0 failed; misses under 500 ms")
}
