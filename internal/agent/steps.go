package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
	"github.com/node-local-coredns/node-local-coredns/internal/metrics"
	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
	"github.com/node-local-coredns/node-local-coredns/internal/netif"
	"github.com/node-local-coredns/node-local-coredns/internal/server"
	"github.com/node-local-coredns/node-local-coredns/internal/sockets"
)

// Steps builds the agent's steps for cfg: the interface (if set up), the
// embedded CoreDNS, the rules (if set up). Everything that can be checked
// without touching the node is checked here: capabilities, tools, and the
// Corefile template.
func Steps(ctx context.Context, cfg config.Config, log *slog.Logger) ([]Step, error) {
	if cfg.MaxConcurrent == 0 {
		// Not sized by the caller (which knows the cgroup's limit too).
		cfg = cfg.Sized(cfg.MemoryLimit)
	}
	if err := checkPrivileges(cfg); err != nil {
		return nil, err
	}
	// The first rendering is checked here, before the node is touched; its
	// error is the agent's exit message, so it is not also logged.
	if _, err := renderCorefile(cfg); err != nil {
		return nil, err
	}
	source := CorefileSource(cfg, log)
	var steps []Step
	if cfg.SetupInterface {
		steps = append(steps, netif.NewManager(netif.Netlink{}, cfg.Interface, cfg.LocalIPs, log))
	}
	steps = append(steps, &serverStep{source: source, addrs: ListenAddrs(cfg)})
	if cfg.SetupNetfilter {
		nf, err := ChooseNetfilter(ctx, cfg.Netfilter, cfg.LocalIPs, log)
		if err != nil {
			return nil, err
		}
		rules, err := nf.Rules(netfilter.Options{
			Port:        cfg.Port,
			SocketMatch: true,
			HostNetwork: cfg.DivertHostNetwork,
			ProbeMark:   cfg.ProbeMark,
		}, log)
		if err != nil {
			return nil, err
		}
		nf.Report()
		steps = append(steps, &rulesStep{rules})
	}
	return steps, nil
}

// ListenAddrs are the addresses the agent serves DNS on.
func ListenAddrs(cfg config.Config) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ip := range cfg.LocalIPs {
		out = append(out, netip.AddrPortFrom(ip, cfg.Port))
	}
	return out
}

// Peers returns the function that tells whether another agent serves cfg's
// addresses.
func Peers(cfg config.Config) func() (bool, error) {
	addrs := ListenAddrs(cfg)
	return func() (bool, error) { return sockets.OthersServing(addrs) }
}

// rulesStep reports the socket-match state after setting up the rules.
type rulesStep struct{ Rules }

// Shared implements agent.Shared: the rules serve every agent on the node.
func (r *rulesStep) Shared() bool { return true }

func (r *rulesStep) Setup() error {
	if err := r.Rules.Setup(); err != nil {
		return err
	}
	metrics.RulesInstalled.Set(1)
	if r.SocketMatch() {
		metrics.SocketMatch.Set(1)
	} else {
		metrics.SocketMatch.Set(0)
	}
	return nil
}

func (r *rulesStep) Teardown() error {
	err := r.Rules.Teardown()
	if err == nil {
		metrics.RulesInstalled.Set(0)
	}
	return err
}

// Draining: after the sockets stop taking new queries, the server answers
// what its UDP sockets have queued (at least drainMin) and lets accepted TCP
// connections finish (at most drainMax).
const (
	drainMin = 100 * time.Millisecond
	drainMax = 2 * time.Second
)

// serverStep is the embedded CoreDNS as a Step.
type serverStep struct {
	source server.Source
	addrs  []netip.AddrPort
	srv    *server.Server
}

// Drain implements agent.Drainer: the sockets stop taking new queries
// (which the gated rules then send to kube-dns, or the kernel to a peer
// agent), what is queued is answered, and accepted TCP connections finish.
func (s *serverStep) Drain() error {
	if s.srv == nil {
		return nil
	}
	n, err := sockets.Detach(s.addrs)
	if n == 0 {
		return err
	}
	start := time.Now()
	time.Sleep(drainMin)
	for time.Since(start) < drainMax {
		if open, err := sockets.Established(s.addrs); err != nil || open == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

func (s *serverStep) Name() string { return "server" }

func (s *serverStep) Setup() error {
	srv, err := server.Start(s.source)
	if err != nil {
		return err
	}
	s.srv = srv
	return nil
}

func (s *serverStep) Sync() (int, error) { return 0, nil }

func (s *serverStep) Teardown() error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Stop()
	s.srv = nil
	return err
}

// renderCorefile reads cfg's Corefile template (or takes the built-in one)
// and renders it.
func renderCorefile(cfg config.Config) (string, error) {
	name, text := "built-in", corefile.Default
	if cfg.CorefilePath != "" {
		b, err := os.ReadFile(cfg.CorefilePath)
		if err != nil {
			return "", fmt.Errorf("reading Corefile template: %w", err)
		}
		name, text = cfg.CorefilePath, string(b)
	}
	return corefile.Render(name, text, corefileValues(cfg))
}

func corefileValues(cfg config.Config) corefile.Values {
	return corefile.Values{
		LocalIPs:          cfg.LocalIPs,
		Upstreams:         cfg.Upstreams,
		UpstreamEndpoints: cfg.UpstreamEndpoints,
		ClusterDomain:     cfg.ClusterDomain,
		Port:              cfg.Port,
		HealthAddr:        cfg.HealthAddr,
		ReadyAddr:         cfg.ReadyAddr,
		MetricsAddr:       cfg.MetricsAddr,
		ReloadInterval:    cfg.ReloadInterval,
		ServeStale:        cfg.ServeStale,
		MaxUDPSize:        cfg.MaxUDPSize,
		MissRate:          cfg.MissRate,
		SuccessCapacity:   cfg.SuccessCapacity,
		DenialCapacity:    cfg.DenialCapacity,
		MaxConcurrent:     cfg.MaxConcurrent,
	}
}

// CorefileSource returns the server.Source that renders cfg's Corefile
// template (read again on every call, so that a changed ConfigMap is seen).
// A template that does not read, render or parse is logged once per
// distinct error and counted in a metric.
func CorefileSource(cfg config.Config, log *slog.Logger) server.Source {
	var (
		mu      sync.Mutex
		lastBad string
	)
	return func() (string, error) {
		out, err := renderCorefile(cfg)
		if err != nil {
			mu.Lock()
			fresh := err.Error() != lastBad
			lastBad = err.Error()
			mu.Unlock()
			if fresh {
				metrics.CorefileErrors.Inc()
				log.Error("refusing Corefile template; the running configuration keeps serving", "error", err)
			}
			return "", err
		}
		mu.Lock()
		lastBad = ""
		mu.Unlock()
		return out, nil
	}
}
