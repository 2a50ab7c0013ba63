package watchdog

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
)

// fakeFencer records restore payloads and deletions.
type fakeFencer struct {
	fenced   bool
	restores int
}

func (f *fakeFencer) Exists(string, string, []string) (bool, error) { return f.fenced, nil }
func (f *fakeFencer) ChainExists(_, chain string) (bool, error) {
	return f.fenced && chain == netfilter.FenceChain, nil
}
func (f *fakeFencer) Restore(payload string) error {
	if !strings.Contains(payload, "-I PREROUTING 1 -m comment --comment node-local-coredns -j "+netfilter.FenceChain) {
		return errors.New("fence jump not inserted first")
	}
	f.fenced = true
	f.restores++
	return nil
}
func (f *fakeFencer) DeleteRule(string, string, []string) error { f.fenced = false; return nil }
func (f *fakeFencer) DeleteChain(string, string) error          { return nil }
func (f *fakeFencer) Mode() string                              { return "fake" }

func TestFencesAfterSilenceAndUnfencesOnAnswer(t *testing.T) {
	fence := &fakeFencer{}
	answering := true
	probe := func(context.Context, netip.AddrPort) error {
		if answering {
			return nil
		}
		return errors.New("timeout")
	}
	w := New(Config{Addrs: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")}, Interval: 250 * time.Millisecond,
		Timeout: 250 * time.Millisecond, Silence: time.Second},
		probe, []netfilter.Fencer{netfilter.IptablesFencer{T: fence, Family: netfilter.IPv4}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	now := time.Unix(1000, 0)
	w.now = func() time.Time { return now }
	w.lastOK = now
	step := func(d time.Duration) {
		now = now.Add(d)
		w.Step(context.Background())
	}
	step(250 * time.Millisecond)
	answering = false
	for range 3 {
		step(250 * time.Millisecond)
	}
	if fence.fenced {
		t.Fatal("fenced after 750 ms of silence, want only after 1 s")
	}
	step(250 * time.Millisecond)
	if !fence.fenced || !w.fenced {
		t.Fatal("not fenced after 1 s of silence")
	}
	step(250 * time.Millisecond)
	if fence.restores != 2 {
		t.Errorf("fence re-applied %d times while silent, want every step (2)", fence.restores)
	}
	answering = true
	step(250 * time.Millisecond)
	if fence.fenced || w.fenced {
		t.Error("still fenced after the agent answered")
	}
}

// A watchdog that finds a fence from an earlier run takes it over and lifts
// it once the agent answers.
func TestTakesOverLeftoverFence(t *testing.T) {
	fence := &fakeFencer{fenced: true}
	w := New(Config{Addrs: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")}, Interval: time.Millisecond,
		Timeout: time.Millisecond, Silence: time.Second},
		func(context.Context, netip.AddrPort) error { return nil },
		[]netfilter.Fencer{netfilter.IptablesFencer{T: fence, Family: netfilter.IPv4}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if fence.fenced {
		t.Error("leftover fence not lifted though the agent answers")
	}
}
