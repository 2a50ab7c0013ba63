// Package agent runs the node-local-coredns lifecycle: set up the interface,
// start serving, install the rules; keep them in place; and on shutdown undo
// it all in reverse order.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/node-local-coredns/node-local-coredns/internal/metrics"
)

// Step is one part of the node setup. Steps are set up in order and torn
// down in reverse order, so that rules (set up last) go first and traffic
// falls back to kube-dns before the server stops answering.
type Step interface {
	// Name names the step in logs and metrics.
	Name() string
	// Setup makes the step's state true.
	Setup() error
	// Sync puts back what someone else removed and returns how much.
	Sync() (restored int, err error)
	// Teardown undoes Setup; what is already gone is not an error.
	Teardown() error
}

// Shared is implemented by steps whose state other agents on the node use
// too (the interface and its addresses, the rules): while another agent
// serves the local IPs, they are left to it.
type Shared interface {
	Shared() bool
}

// Drainer is implemented by a step that, before anything is torn down,
// stops taking new queries and finishes those it has (the server).
type Drainer interface {
	Drain() error
}

// Agent runs Steps.
type Agent struct {
	steps        []Step
	syncInterval time.Duration
	log          *slog.Logger
	// peers reports whether another agent serves the local IPs.
	peers func() (bool, error)
}

// New returns an Agent that runs steps in order and syncs them every
// syncInterval. peers, if not nil, reports whether another agent on the
// node serves the same local IPs (during a rolling upgrade).
func New(steps []Step, syncInterval time.Duration, peers func() (bool, error), log *slog.Logger) *Agent {
	return &Agent{steps: steps, syncInterval: syncInterval, peers: peers, log: log}
}

// Run sets up every step, keeps them in sync until ctx is done, then tears
// them down in reverse order. A step that fails to set up makes Run tear
// down the steps before it and return the error: the node is left as it was.
func (a *Agent) Run(ctx context.Context) error {
	// Each step's counters exist from the start, at 0, so that an alert on
	// their increase sees the first failure or restore.
	for _, s := range a.steps {
		metrics.SetupErrors.WithLabelValues(s.Name())
		metrics.Restored.WithLabelValues(s.Name())
	}
	for i, s := range a.steps {
		if err := s.Setup(); err != nil {
			metrics.SetupErrors.WithLabelValues(s.Name()).Inc()
			err = fmt.Errorf("setting up %s: %w", s.Name(), err)
			if terr := a.teardown(a.steps[:i]); terr != nil {
				err = errors.Join(err, terr)
			}
			return err
		}
		a.log.Info("set up", "step", s.Name())
	}
	a.log.Info("serving")

	tick := time.NewTicker(a.syncInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("shutting down", "cause", context.Cause(ctx))
			return a.shutdown()
		case <-tick.C:
			a.sync()
		}
	}
}

func (a *Agent) sync() {
	for _, s := range a.steps {
		n, err := s.Sync()
		if n > 0 {
			metrics.Restored.WithLabelValues(s.Name()).Add(float64(n))
			a.log.Warn("restored what was missing", "step", s.Name(), "count", n)
		}
		if err != nil {
			metrics.SetupErrors.WithLabelValues(s.Name()).Inc()
			a.log.Error("sync failed", "step", s.Name(), "error", err)
		}
	}
}

// othersServing asks peers, treating an error as "no": then the agent
// cleans up as if it were alone, which never breaks DNS (the rules are
// gated on a bound socket, and a peer's sync puts them back).
func (a *Agent) othersServing() bool {
	if a.peers == nil {
		return false
	}
	ok, err := a.peers()
	if err != nil {
		a.log.Error("looking for other agents", "error", err)
		return false
	}
	return ok
}

// shutdown first drains: the server stops taking new queries (which then go
// to kube-dns, or to another agent) and answers those it has. Then it tears
// everything down, unless another agent serves the local IPs: then it stops
// only its own serving and leaves the interface and the rules to that agent,
// so that the diversion is never removed while an agent serves. It looks
// again after it stopped serving, so that two agents stopping at once do not
// both leave everything behind.
func (a *Agent) shutdown() error {
	var errs []error
	for _, s := range a.steps {
		if d, ok := s.(Drainer); ok {
			if err := d.Drain(); err != nil {
				errs = append(errs, fmt.Errorf("draining %s: %w", s.Name(), err))
			}
		}
	}
	if !a.othersServing() {
		return errors.Join(append(errs, a.teardown(a.steps))...)
	}
	a.log.Info("another agent serves the local IPs: handing over to it")
	var own, shared []Step
	for _, s := range a.steps {
		if sh, ok := s.(Shared); ok && sh.Shared() {
			shared = append(shared, s)
		} else {
			own = append(own, s)
		}
	}
	errs = append(errs, a.teardown(own))
	if a.othersServing() {
		a.log.Info("left the interface and the rules to the other agent")
		return errors.Join(errs...)
	}
	a.log.Info("the other agent stopped too: cleaning up")
	errs = append(errs, a.teardown(shared))
	return errors.Join(errs...)
}

// teardown tears down steps in reverse order, going on past errors.
func (a *Agent) teardown(steps []Step) error {
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		start := time.Now()
		if err := s.Teardown(); err != nil {
			errs = append(errs, fmt.Errorf("tearing down %s: %w", s.Name(), err))
			continue
		}
		a.log.Info("torn down", "step", s.Name(), "took", time.Since(start).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}
