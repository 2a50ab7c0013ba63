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

// Agent runs Steps.
type Agent struct {
	steps        []Step
	syncInterval time.Duration
	log          *slog.Logger
}

// New returns an Agent that runs steps in order and syncs them every
// syncInterval.
func New(steps []Step, syncInterval time.Duration, log *slog.Logger) *Agent {
	return &Agent{steps: steps, syncInterval: syncInterval, log: log}
}

// Run sets up every step, keeps them in sync until ctx is done, then tears
// them down in reverse order. A step that fails to set up makes Run tear
// down the steps before it and return the error: the node is left as it was.
func (a *Agent) Run(ctx context.Context) error {
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
			return a.teardown(a.steps)
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
