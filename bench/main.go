// Command bench measures what a cache hit costs node-local-coredns, side by
// side with stock CoreDNS, Unbound and dnsmasq measured in the same run,
// and what a node gains over DNAT; it writes docs/benchmarks.md and its
// chart. make bench runs it; make bench ARGS='-only cpu -reps 1' runs one
// figure.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// Figures, each selectable with -only.
const (
	figCPU     = "cpu"     // CPU per cache hit at fixed rates
	figMax     = "max"     // highest rate with under 0.1 % loss
	figLatency = "latency" // p50/p99 at 10k queries/s
	figMemory  = "memory"  // RSS idle, with 10k and 100k names
	figMiss    = "miss"    // CPU per cache miss
	figPods    = "pods"    // pod traffic: a node's pods through each server
	figNode    = "node"    // the simulated node: agent against DNAT
	figGo      = "go"      // the Go benchmarks of the serving hot path
)

var rates = []int{10000, 40000, 80000}

type options struct {
	reps     int
	duration time.Duration
	only     map[string]bool
	out      string
	chart    string
	bin      string
	// gomaxprocs is the Go servers' GOMAXPROCS.
	gomaxprocs int
}

func (o options) want(fig string) bool { return len(o.only) == 0 || o.only[fig] }

func main() {
	var o options
	only := flag.String("only", "", "comma-separated figures: cpu,miss,pods,max,latency,memory,node,go (default: all)")
	flag.IntVar(&o.reps, "reps", 5, "repetitions of every measurement, servers interleaved")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of one load run")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "the report to write (empty: print only)")
	flag.StringVar(&o.chart, "chart", "docs/benchmarks.png", "the chart to write")
	flag.IntVar(&o.gomaxprocs, "gomaxprocs", 2, "GOMAXPROCS of the Go servers (2: what Go sets in a container limited to less than 2 CPUs)")
	flag.StringVar(&o.bin, "bin", "", "directory holding node-local-coredns and coredns-stock (default: build them)")
	flag.Parse()
	if *only != "" {
		o.only = map[string]bool{}
		for _, f := range strings.Split(*only, ",") {
			o.only[strings.TrimSpace(f)] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if runtime.NumCPU() < 2 {
		return fmt.Errorf("needs 2 CPUs: one for the server under test, one for the load")
	}
	for _, tool := range []string{"dnsperf", "unbound", "dnsmasq", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (make bench installs it)", tool)
		}
	}
	pinSelf(1)
	work, err := os.MkdirTemp("", "nlc-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if o.bin == "" {
		o.bin = work
		for _, b := range [][2]string{{"node-local-coredns", "./cmd/node-local-coredns"}, {"coredns-stock", "./bench/coredns-stock"}} {
			if out, err := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(work, b[0]), b[1]).CombinedOutput(); err != nil {
				return fmt.Errorf("building %s: %w\n%s", b[0], err, out)
			}
		}
	}
	up, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.Shutdown()
	hits10k, err := nameFile(work, "hits10k", 10000, "hit")
	if err != nil {
		return err
	}
	hits100k, err := nameFile(work, "hits100k", 100000, "big")
	if err != nil {
		return err
	}
	res := newResults()
	start := time.Now()
	srvs := servers(o.bin)
	if o.want(figCPU) || o.want(figMiss) {
		if err := measureCPU(ctx, o, srvs, work, hits10k, res); err != nil {
			return fmt.Errorf("CPU per cache hit and miss: %w", err)
		}
	}
	if o.want(figPods) {
		if err := measurePods(ctx, o, work, res); err != nil {
			return fmt.Errorf("pod traffic: %w", err)
		}
	}
	for rep := 1; rep <= o.reps && ctx.Err() == nil; rep++ {
		for _, s := range srvs {
			if !anyServerFigure(o) {
				break
			}
			fmt.Fprintf(os.Stderr, "rep %d: %s\n", rep, s.name)
			if err := measureServer(ctx, o, s, work, rep, hits10k, hits100k, res); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	if o.want(figGo) {
		out, err := exec.CommandContext(ctx, "taskset", "-c", "0", "go", "test", "-run", "XXX", "-bench", ".", "-benchmem",
			"-count", fmt.Sprint(o.reps), "./internal/server", "./plugin/fastcache").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go benchmarks: %w\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Benchmark") {
				res.goBench += l + "\n"
			}
		}
	}
	var node *nodeView
	if o.want(figNode) {
		node, err = measureNode(ctx)
		if err != nil {
			return fmt.Errorf("node view: %w", err)
		}
	}
	report := res.markdown(o, srvs, node, time.Since(start))
	fmt.Print(report)
	if o.out == "" {
		return nil
	}
	if o.want(figCPU) {
		if err := res.chart(o.chart, srvs); err != nil {
			return fmt.Errorf("drawing the chart: %w", err)
		}
	}
	return os.WriteFile(o.out, []byte(report), 0o644)
}

func anyServerFigure(o options) bool {
	return o.want(figMax) || o.want(figLatency) || o.want(figMemory)
}

// pinSelf keeps the harness (dnsperf's parent and the upstream) on cpu.
func pinSelf(cpu int) {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, t := range tasks {
		var tid int
		if _, err := fmt.Sscanf(filepath.Base(t), "%d", &tid); err == nil {
			_ = unix.SchedSetaffinity(tid, &set)
		}
	}
}

func startUpstream() (*nodesim.AuthDNS, error) {
	pc, err := net.ListenPacket("udp", upstreamAddr)
	if err != nil {
		return nil, fmt.Errorf("starting the upstream: %w", err)
	}
	ln, err := net.Listen("tcp", upstreamAddr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("starting the upstream: %w", err)
	}
	// A long TTL: cache hits stay hits for the whole run.
	return nodesim.NewAuthDNS("bench.example.org", 3600, pc, ln), nil
}

// nameFile writes a dnsperf input of n A queries for names the upstream
// answers with an address (under svc.bench.example.org).
func nameFile(dir, name string, n int, prefix string) (string, error) {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%s-%d.svc.bench.example.org A\n", prefix, i)
	}
	path := filepath.Join(dir, name+".txt")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

func measureServer(ctx context.Context, o options, s *server, work string, rep int, hits10k, hits100k string, res *results) error {
	dir := filepath.Join(work, fmt.Sprintf("%s-%d", s.name, rep))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := s.start(ctx, dir, o.gomaxprocs); err != nil {
		return err
	}
	defer s.stop()
	time.Sleep(500 * time.Millisecond)
	idle, idleAnon := s.rss(), s.rssAnon()
	if err := warm(ctx, s, hits10k); err != nil {
		return err
	}
	if o.want(figMemory) {
		res.add(s.name, "rss idle (MiB)", idle/(1<<20))
		res.add(s.name, "rss 10k names (MiB)", s.rss()/(1<<20))
		res.add(s.name, "anonymous rss idle (MiB)", idleAnon/(1<<20))
		res.add(s.name, "anonymous rss 10k names (MiB)", s.rssAnon()/(1<<20))
	}
	if o.want(figLatency) {
		p, err := dnsperf(ctx, s.port, hits10k, 10000, o.duration/2, 0, true)
		if err != nil {
			return err
		}
		res.add(s.name, "latency p50 at 10k/s (µs)", float64(p.percentile(50).Microseconds()))
		res.add(s.name, "latency p99 at 10k/s (µs)", float64(p.percentile(99).Microseconds()))
	}
	if o.want(figMax) {
		p, err := dnsperf(ctx, s.port, hits10k, 0, o.duration, 0, false)
		if err != nil {
			return err
		}
		best := 0.0
		for _, f := range []float64{1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1} {
			rate := int(p.qps * f)
			q, err := dnsperf(ctx, s.port, hits10k, rate, o.duration/2, 0, false)
			if err != nil {
				return err
			}
			if q.lossRatio() < 0.001 {
				best = q.qps
				break
			}
		}
		res.add(s.name, "highest rate under 0.1% loss (queries/s)", best)
	}
	if o.want(figMemory) {
		base := s.rss()
		// At 10,000/s: every one is a miss, which dnsmasq, for one, answers
		// at most 150 at a time.
		if _, err := dnsperf(ctx, s.port, hits100k, 10000, 15*time.Second, 1, false); err != nil {
			return err
		}
		after := s.rss()
		res.add(s.name, "rss 100k more names (MiB)", after/(1<<20))
		res.add(s.name, "bytes per cached name", (after-base)/100000)
	}
	return nil
}

// warm asks every one of the 10,000 names at a rate every server answers
// as misses (a miss lost here would be a miss, not a hit, in the figures
// after), again while any query went unanswered; then once more, a hit
// everywhere (fastcache stores the answer its cache gives for a hit, so
// this is when it stores them).
func warm(ctx context.Context, s *server, names string) error {
	for pass := 0; ; pass++ {
		p, err := dnsperf(ctx, s.port, names, 5000, 10*time.Second, 1, false)
		if err != nil {
			return err
		}
		if p.completed >= p.sent || pass == 2 {
			break
		}
	}
	_, err := dnsperf(ctx, s.port, names, 10000, 10*time.Second, 1, false)
	return err
}

// roundLen is how long a server is loaded at one rate in one round of the
// CPU figure.
const roundLen = time.Second

// measureCPU measures CPU per cache hit with every server running at once,
// in rounds: at each rate, a round loads each server in turn for roundLen,
// the others idle, in an order that rotates from round to round. The
// figures of one round are taken seconds apart. This VM's speed drifts by
// tens of per cent over minutes, and rounds measure the servers under the
// same drift, which the per-round ratios cancel.
func measureCPU(ctx context.Context, o options, srvs []*server, work, names string, res *results) error {
	for _, s := range srvs {
		dir := filepath.Join(work, "cpu-"+s.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := s.start(ctx, dir, o.gomaxprocs); err != nil {
			return err
		}
		defer s.stop()
	}
	for _, s := range srvs {
		fmt.Fprintf(os.Stderr, "cpu: warming %s\n", s.name)
		if err := warm(ctx, s, names); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	rounds := cpuRounds(o.reps)
	if o.want(figMiss) {
		if err := measureMisses(ctx, srvs, work, rounds, res); err != nil {
			return err
		}
	}
	if !o.want(figCPU) {
		return nil
	}
	for _, rate := range rates {
		res.paired[cpuKey(rate)] = true
		for round := range rounds {
			fmt.Fprintf(os.Stderr, "cpu: %d/s, round %d of %d\n", rate, round+1, rounds)
			for j := range srvs {
				s := srvs[(round+j)%len(srvs)]
				before := s.cpu()
				p, err := dnsperf(ctx, s.port, names, rate, roundLen, 0, false)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				used := s.cpu() - before
				perHit := math.NaN()
				if p.completed > 0 {
					perHit = float64(used.Microseconds()) / p.completed
				}
				// One value per round for every server, NaN for none, so
				// that the i-th values of two servers are from one round.
				res.add(s.name, cpuKey(rate), perHit)
				res.add(s.name, achievedKey(rate), p.qps)
			}
		}
	}
	return nil
}

// missKey is the figure of measureMisses.
const missKey = "CPU per cache miss (µs)"

// Each round of measureMisses asks every server missesPerRound names it
// has never seen, at missRate a second.
const (
	missesPerRound = 3000
	missRate       = 2000
)

// measureMisses measures CPU per cache miss in rounds, as measureCPU does
// for hits (the servers running, each loaded in turn, in an order that
// rotates): each round asks every server missesPerRound new names.
func measureMisses(ctx context.Context, srvs []*server, work string, rounds int, res *results) error {
	res.paired[missKey] = true
	for round := range rounds {
		fmt.Fprintf(os.Stderr, "cpu: misses, round %d of %d\n", round+1, rounds)
		for j := range srvs {
			s := srvs[(round+j)%len(srvs)]
			names, err := nameFile(work, fmt.Sprintf("miss-%s-%d", s.name, round), missesPerRound, fmt.Sprintf("miss%d", round))
			if err != nil {
				return err
			}
			before := s.cpu()
			p, err := dnsperf(ctx, s.port, names, missRate, missesPerRound*time.Second/missRate, 1, false)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			perMiss := math.NaN()
			if p.completed > 0 {
				perMiss = float64((s.cpu() - before).Microseconds()) / p.completed
			}
			res.add(s.name, missKey, perMiss)
		}
	}
	return nil
}

// cpuRounds is the CPU figure's rounds per rate: two per repetition.
func cpuRounds(reps int) int { return 2 * reps }

func cpuKey(rate int) string { return fmt.Sprintf("CPU per cache hit at %dk/s (µs)", rate/1000) }
func achievedKey(rate int) string {
	return fmt.Sprintf("answered at %dk/s offered (queries/s)", rate/1000)
}

// nodeView is the simulated node's figures: the same pod load through
// DNAT and through the agent.
type nodeView struct {
	dnat, agent           *nodesim.Report
	dnatCT, agentCT       int
	burstDNAT, burstAgent *nodesim.Report
}

func measureNode(ctx context.Context) (*nodeView, error) {
	if why := nodesim.Supported(); why != "" {
		return nil, fmt.Errorf("%s", why)
	}
	bin, err := os.MkdirTemp("", "nlc-bench-node-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	agentBin := filepath.Join(bin, "node-local-coredns")
	if out, err := exec.Command("go", "build", "-o", agentBin, "./cmd/node-local-coredns").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the agent: %w\n%s", err, out)
	}
	n, err := nodesim.New(ctx, nodesim.Options{})
	if err != nil {
		return nil, err
	}
	defer n.Close()
	spec := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: 1000, Duration: 10 * time.Second, HitNames: 200}
	burst := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: 4000, Duration: 3 * time.Second, HitNames: 200, Workers: 128}
	v := &nodeView{}
	count := func(r *nodesim.Report) int {
		ct, _ := n.ConntrackDNS(nodesim.KubeDNS)
		return len(ct) * 10000 / max(len(r.Outcomes), 1)
	}
	_ = n.FlushConntrack()
	v.dnat = n.Load(ctx, spec)
	v.dnatCT = count(v.dnat)
	_ = n.FlushConntrack()
	v.burstDNAT = n.Load(ctx, burst)
	a, err := n.StartAgent(agentBin)
	if err != nil {
		return nil, err
	}
	defer a.Stop(30 * time.Second) //nolint:errcheck
	if err := a.WaitLog(ctx, "msg=serving", 20*time.Second); err != nil {
		return nil, err
	}
	_ = n.FlushConntrack()
	v.agent = n.Load(ctx, spec)
	v.agentCT = count(v.agent)
	v.burstAgent = n.Load(ctx, burst)
	return v, nil
}

// median returns the median of the values that are not NaN (the mean of
// the middle two for an even count), with their minimum and maximum.
func median(xs []float64) (med, lo, hi float64) {
	s := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}
