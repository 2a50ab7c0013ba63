package e2e

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// memoryLimit is the DaemonSet's memory limit of the agent's container.
const memoryLimit = 128 << 20

// attackNode is a simulated node with the agent running in a memory cgroup
// at the DaemonSet's limit, a name cached, and a function that reports
// whether the kernel OOM-killed anything.
func attackNode(t *testing.T, args ...string) (*nodesim.Node, *nodesim.Agent, *nodesim.MemoryCgroup) {
	t.Helper()
	n := newNode(t, nodesim.Options{})
	cg, err := nodesim.NewMemoryCgroup(memoryLimit)
	if err != nil {
		t.Fatal(err)
	}
	// The DaemonSet gives the agent its limit through the downward API.
	args = append([]string{fmt.Sprintf("--memory-limit=%d", memoryLimit)}, args...)
	a, err := n.StartAgentIn(cg, binary, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := a.Stop(stopTimeout); err != nil {
			t.Errorf("stopping the agent: %v", err)
		}
		if t.Failed() {
			t.Logf("the agent's log:\n%s", lastLines(a.Output(), 30))
		}
		if err := cg.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := a.WaitLog(t.Context(), "msg=serving", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return n, a, cg
}

// cachedName is what the legitimate pod asks during an attack.
const cachedName = "hit-1.default.svc.cluster.local."

// lookups is what the legitimate pod saw during an attack.
type lookups struct {
	asked, failed int
	first         error
}

// allAnswered fails t unless every lookup of the cached name was answered.
func (l lookups) allAnswered(t *testing.T) {
	t.Helper()
	if l.failed != 0 {
		t.Errorf("%d of %d lookups of a cached name failed during the attack, want 0 (first: %v)", l.failed, l.asked, l.first)
	}
}

// underAttack runs attack while the second pod asks the cached name every
// 20 ms, checks that the agent still runs and that the kernel killed
// nothing for the limit, and returns what the lookups met.
func underAttack(t *testing.T, n *nodesim.Node, a *nodesim.Agent, cg *nodesim.MemoryCgroup, attack func()) lookups {
	t.Helper()
	legit := n.Pods[1]
	resolve(t, legit, "udp", nodesim.KubeDNS, cachedName, dns.TypeA)
	var (
		wg            sync.WaitGroup
		stop          = make(chan struct{})
		asked, failed int
		firstFailure  error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			asked++
			r, _, err := legit.Query("udp", nodesim.KubeDNS, cachedName, dns.TypeA)
			if err == nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1) {
				err = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if err != nil {
				failed++
				if firstFailure == nil {
					firstFailure = err
				}
			}
		}
	}()
	dnsAddr := netip.AddrPortFrom(nodesim.KubeDNS, 53)
	dropsBefore, err := n.UDPDrops(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	attack()
	close(stop)
	wg.Wait()
	drops, err := n.UDPDrops(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the agent's UDP sockets dropped %d datagrams (full receive buffer) during the attack", drops-dropsBefore)
	peak, _ := cg.Peak()
	kills, err := cg.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the cached name: %d lookups, %d failed; the agent's peak memory %.1f MiB of %d MiB", asked, failed, float64(peak)/(1<<20), memoryLimit>>20)
	if kills != 0 || a.Exited() {
		t.Fatalf("the agent was OOM-killed (%d kills in its cgroup, exited: %v)", kills, a.Exited())
	}
	return lookups{asked: asked, failed: failed, first: firstFailure}
}

// A pod floods names that kube-dns never answers (its endpoints are hung),
// in the cluster domain and outside it: the misses waiting for kube-dns are
// bounded (forward's max_concurrent), so the agent stays within its memory
// limit and keeps answering the cached name.
func TestAttackUnansweredNames(t *testing.T) {
	n, a, cg := attackNode(t)
	underAttack(t, n, a, cg, func() {
		for _, e := range n.Endpoints {
			e.DNS.SetDown(true)
		}
		rep, err := nodesim.Flood(n.Pods[0].NS, nodesim.FloodSpec{
			Server: netip.AddrPortFrom(nodesim.KubeDNS, 53), Rate: 20000, Duration: 8 * time.Second,
			Name: func(i int) string {
				if i%2 == 0 {
					return fmt.Sprintf("flood-%d.default.svc.cluster.local.", i)
				}
				return fmt.Sprintf("flood-%d.example.org.", i)
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("flood: %d queries sent, answers %v", rep.Sent, rep.Answers)
		// What passed misslimit (500 a second, bursts of 1,000) went on
		// to the chain and got an answer there; the rest was dropped.
		var passed int64
		for _, n := range rep.Answers {
			passed += n
		}
		if bound := int64(500*8 + 1000 + 250); passed > bound {
			t.Errorf("%d of the flood's queries got past the cache, want at most %d (--miss-rate 500 for 8 s, and the burst)", passed, bound)
		}
	}).allAnswered(t)
}

// Two pods fill the caches with distinct names whose answers are about
// 1 KB (TXT, asked with a 1,232-byte buffer), 12,000 queries a second:
// both success caches reach their capacity (sized from the memory limit)
// and go no further, and the agent stays within its memory limit. With the
// deployed configuration (misslimit on: 500 misses a second per pod, 9,000
// names per zone in 16 s, more than a cache holds) the cached name is
// answered every time. With misslimit off the flood's misses take both
// cores of this machine and lookups of the cached name are lost: only the
// memory bound is asserted.
func TestAttackCacheFill(t *testing.T) {
	capacity := config.SizedCapacity(memoryLimit)
	for _, tc := range []struct {
		name     string
		args     []string
		answered bool
		// long enough to fill the caches: misslimit lets 1,000 misses
		// through per pod, then 500 a second
		duration time.Duration
	}{
		{"deployed", nil, true, 16 * time.Second},
		{"misslimit-off", []string{"--miss-rate=0"}, false, 8 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, a, cg := attackNode(t, tc.args...)
			seen := underAttack(t, n, a, cg, func() {
				var wg sync.WaitGroup
				for p := range 2 {
					wg.Go(func() {
						rep, err := nodesim.Flood(n.Pods[p].NS, nodesim.FloodSpec{
							Server: netip.AddrPortFrom(nodesim.KubeDNS, 53), Rate: 6000, Duration: tc.duration,
							Qtype: dns.TypeTXT, EDNS: 1232,
							Name: func(i int) string {
								if i%2 == 0 {
									return fmt.Sprintf("fill-%d-%d.default.svc.cluster.local.", p, i)
								}
								return fmt.Sprintf("fill-%d-%d.example.org.", p, i)
							},
						})
						if err != nil {
							t.Error(err)
							return
						}
						t.Logf("pod %d: %d queries sent, answers %v", p, rep.Sent, rep.Answers)
					})
				}
				wg.Wait()
			})
			if tc.answered {
				seen.allAnswered(t)
			}
			checkFilled(t, n, capacity)
		})
	}
}

// checkFilled checks that both zones' success caches are full, close to
// capacity (the fast path's store evicts per shard, so a few shards stay
// short) and not beyond it. The answers are the fast path's store's alone
// (fastcache stores them once): CoreDNS's cache holds none of them.
func checkFilled(t *testing.T, n *nodesim.Node, capacity int) {
	t.Helper()
	zones := map[string]bool{}
	for _, s := range metricSeries(t, n, "coredns_fastcache_entries") {
		if s.Labels["type"] != "success" {
			continue
		}
		zones[s.Labels["zone"]] = true
		t.Logf("cache of %s: %.0f success entries, capacity %d", s.Labels["zone"], s.Value, capacity)
		if s.Value > float64(capacity) || s.Value < 0.75*float64(capacity) {
			t.Errorf("cache of %s holds %.0f success entries, want at most its capacity %d and at least 3/4 of it (filled)", s.Labels["zone"], s.Value, capacity)
		}
	}
	if len(zones) != 2 {
		t.Errorf("success caches of zones %v, want the built-in Corefile's two", zones)
	}
	for _, s := range metricSeries(t, n, "coredns_cache_entries") {
		if s.Labels["type"] == "success" && s.Value > 0 {
			t.Errorf("CoreDNS's cache of %s holds %.0f answers the fast path stores", s.Labels["zones"], s.Value)
		}
	}
}

// A pod opens TCP connections as fast as the agent accepts them, each
// announcing a 65,535-byte message, sending 1,000 bytes of it and holding
// it: the agent holds no more of them than one client's cap (the rest are
// closed at once), reads only what has arrived, stays within its memory
// limit and keeps answering the cached name, over UDP and, to another
// pod, over TCP.
func TestAttackTCPHolds(t *testing.T) {
	n, a, cg := attackNode(t)
	var perClient int
	for _, l := range strings.Split(a.Output(), "\n") {
		if _, err := fmt.Sscanf(l[max(0, strings.Index(l, "TCP: at most")):], "TCP: at most %d connections at once, %d per client address", new(int), &perClient); err == nil {
			break
		}
	}
	if perClient == 0 {
		t.Fatalf("the agent logged no TCP caps:\n%s", lastLines(a.Output(), 30))
	}
	var (
		most    float64
		samples int
	)
	underAttack(t, n, a, cg, func() {
		opened, refused := 0, 0
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		deadline := time.Now().Add(8 * time.Second)
		var (
			wg             sync.WaitGroup
			asked, failed  int
			firstTCPFailed error
		)
		wg.Go(func() {
			for time.Now().Before(deadline) {
				time.Sleep(250 * time.Millisecond)
				asked++
				if _, _, err := n.Pods[1].Query("tcp", nodesim.KubeDNS, cachedName, dns.TypeA); err != nil {
					failed++
					firstTCPFailed = cmp.Or(firstTCPFailed, err)
				}
				if v, err := nodesim.Metric(t.Context(), n.NS, agentMetrics, "coredns_fastcache_tcp_connections"); err == nil {
					most = max(most, v)
					samples++
				}
			}
		})
		partial := append([]byte{0xff, 0xff}, make([]byte, 1000)...)
		dial := nodesim.Dialer(n.Pods[0].NS)
		// The attacker keeps every connection it opened (the agent resets
		// those past its caps), so it stops short of this process's file
		// limit: the other pod's lookups need descriptors too (at 20,000, a
		// fast run once took them all: "too many open files").
		bound := 20000
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(bound)+2000 {
			bound = int(lim.Cur) - 2000
		}
		for time.Now().Before(deadline) && opened < bound {
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			c, err := dial(ctx, "tcp", netip.AddrPortFrom(nodesim.KubeDNS, 53).String())
			cancel()
			if err != nil {
				refused++
				continue
			}
			_, _ = c.Write(partial)
			conns = append(conns, c)
			opened++
		}
		wg.Wait()
		t.Logf("opened %d TCP connections with partial messages (%d dials failed); the agent held at most %.0f at once (cap per client %d)", opened, refused, most, perClient)
		t.Logf("the other pod over TCP: %d lookups of the cached name, %d failed", asked, failed)
		if failed != 0 {
			t.Errorf("%d of %d lookups over TCP from another pod failed during the attack (first: %v)", failed, asked, firstTCPFailed)
		}
	}).allAnswered(t)
	if samples == 0 {
		t.Error("the agent's TCP connections gauge was never read during the attack")
	}
	// The other pod's connection is one more than the attacker's share.
	if most > float64(perClient+1) {
		t.Errorf("the agent held %.0f TCP connections at once, want at most one client's cap (%d) and the other pod's", most, perClient)
	}
	closed := 0.0
	for _, s := range metricSeries(t, n, "coredns_fastcache_tcp_refused_total") {
		if s.Labels["reason"] == "client" {
			closed += s.Value
		}
	}
	t.Logf("connections closed on accepting them, past the client's cap: %.0f", closed)
	if closed == 0 {
		t.Error("no connection was closed for the client's cap")
	}
}

// Pods ask, over TCP, distinct names whose answers are about 54 KB (a zone
// of their own can serve them), misslimit off: the caches count such
// answers at their size against a budget (an eighth of Go's soft limit),
// and past it answer them without caching, so that the agent stays within
// its memory limit and keeps answering the cached name.
func TestAttackLargeAnswers(t *testing.T) {
	n, a, cg := attackNode(t, "--miss-rate=0")
	var answered, failed, bytes int64
	var mu sync.Mutex
	underAttack(t, n, a, cg, func() {
		var wg sync.WaitGroup
		deadline := time.Now().Add(8 * time.Second)
		dial := nodesim.Dialer(n.Pods[0].NS)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline) && i < 100000; i++ {
					ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
					c, err := dial(ctx, "tcp", netip.AddrPortFrom(nodesim.KubeDNS, 53).String())
					cancel()
					if err != nil {
						mu.Lock()
						failed++
						mu.Unlock()
						continue
					}
					m := new(dns.Msg)
					m.SetQuestion(fmt.Sprintf("large-%d-%d.example.org.", w, i), dns.TypeTXT)
					dc := &dns.Conn{Conn: c}
					_ = c.SetDeadline(time.Now().Add(3 * time.Second))
					err = dc.WriteMsg(m)
					var r *dns.Msg
					if err == nil {
						r, err = dc.ReadMsg()
					}
					c.Close()
					mu.Lock()
					if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 200 {
						failed++
					} else {
						answered++
						bytes += int64(r.Len())
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		t.Logf("%d large answers received (%.0f MB), %d queries failed or refused", answered, float64(bytes)/1e6, failed)
	}).allAnswered(t)
	if answered == 0 {
		t.Fatal("no large answer was received: the attack did not run")
	}
	used := metricValue(t, n, "coredns_fastcache_large_answers_bytes")
	budget := metricValue(t, n, "coredns_fastcache_large_answers_budget_bytes")
	uncached := metricValue(t, n, "coredns_fastcache_uncached_large_answers_total")
	t.Logf("large answers: %.1f MiB counted of a %.1f MiB budget; %.0f sent without being cached", used/(1<<20), budget/(1<<20), uncached)
	if budget <= 0 || used > budget {
		t.Errorf("large answers count %.0f bytes against a budget of %.0f", used, budget)
	}
	if cachedAll := budget / (2 * 54000); float64(answered) > 2*cachedAll && uncached == 0 {
		t.Errorf("%d large answers, more than the budget holds, and none sent uncached", answered)
	}
}
