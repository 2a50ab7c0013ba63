package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a Step that records every call in a shared log.
type recorder struct {
	name     string
	log      *[]string
	mu       *sync.Mutex
	setupErr error
	restore  int
}

func (r *recorder) Name() string { return r.name }
func (r *recorder) record(what string) {
	r.mu.Lock()
	*r.log = append(*r.log, what+" "+r.name)
	r.mu.Unlock()
}
func (r *recorder) Setup() error    { r.record("setup"); return r.setupErr }
func (r *recorder) Teardown() error { r.record("teardown"); return nil }
func (r *recorder) Sync() (int, error) {
	r.record("sync")
	return r.restore, nil
}

func steps(log *[]string, mu *sync.Mutex, names ...string) []*recorder {
	var out []*recorder
	for _, n := range names {
		out = append(out, &recorder{name: n, log: log, mu: mu})
	}
	return out
}

func asSteps(rs []*recorder) []Step {
	out := make([]Step, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// Rules go first on shutdown (traffic falls back to kube-dns while the
// server still answers what is in flight), then the server, then the
// interface.
func TestTeardownInReverseOrder(t *testing.T) {
	var (
		log []string
		mu  sync.Mutex
	)
	rs := steps(&log, &mu, "interface", "server", "rules")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- New(asSteps(rs), time.Hour, nil, discard).Run(ctx) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{"setup interface", "setup server", "setup rules", "teardown rules", "teardown server", "teardown interface"}
	if !slices.Equal(log, want) {
		t.Errorf("calls %q, want %q", log, want)
	}
}

// A failed step leaves the node as it was: the steps before it are torn
// down in reverse order, the ones after it never start.
func TestFailedSetupUndoesEarlierSteps(t *testing.T) {
	var (
		log []string
		mu  sync.Mutex
	)
	rs := steps(&log, &mu, "interface", "server", "rules")
	rs[1].setupErr = errors.New("address in use")
	err := New(asSteps(rs), time.Hour, nil, discard).Run(context.Background())
	if err == nil || err.Error() != "setting up server: address in use" {
		t.Errorf("error %v, want the server's, wrapped", err)
	}
	want := []string{"setup interface", "setup server", "teardown interface"}
	if !slices.Equal(log, want) {
		t.Errorf("calls %q, want %q", log, want)
	}
}

func TestSyncRunsEveryInterval(t *testing.T) {
	var (
		log []string
		mu  sync.Mutex
	)
	rs := steps(&log, &mu, "interface", "rules")
	rs[1].restore = 1
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- New(asSteps(rs), 20*time.Millisecond, nil, discard).Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := 0
		for _, l := range log {
			if l == "sync rules" {
				n++
			}
		}
		mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rules were not synced twice within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// sharedRecorder is a recorder whose state other agents use too.
type sharedRecorder struct{ *recorder }

func (sharedRecorder) Shared() bool { return true }

// drainRecorder records Drain calls.
type drainRecorder struct{ *recorder }

func (d drainRecorder) Drain() error { d.record("drain"); return nil }

// A stopping agent drains its server first. While another agent serves the
// local IPs, it then stops only its own serving; if the other one is gone by
// then, it cleans up after all.
func TestShutdownHandsOverToPeer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peers []bool // answers to successive peer checks
		want  []string
	}{
		{"alone", []bool{false}, []string{"drain server", "teardown rules", "teardown server", "teardown interface"}},
		{"peer keeps serving", []bool{true, true}, []string{"drain server", "teardown server"}},
		{"peer stopped meanwhile", []bool{true, false}, []string{"drain server", "teardown server", "teardown rules", "teardown interface"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				log []string
				mu  sync.Mutex
			)
			rs := steps(&log, &mu, "interface", "server", "rules")
			s := []Step{sharedRecorder{rs[0]}, drainRecorder{rs[1]}, sharedRecorder{rs[2]}}
			calls := 0
			peers := func() (bool, error) {
				ok := tc.peers[min(calls, len(tc.peers)-1)]
				calls++
				return ok, nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- New(s, time.Hour, peers, discard).Run(ctx) }()
			time.Sleep(10 * time.Millisecond)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			got := slices.DeleteFunc(log, func(s string) bool { return len(s) > 5 && s[:5] == "setup" })
			if !slices.Equal(got, tc.want) {
				t.Errorf("calls %q, want %q", got, tc.want)
			}
		})
	}
}
