// Command node-local-coredns is a node-local DNS cache for Kubernetes: it
// takes over the kube-dns ClusterIP on the node, serves it with an embedded
// CoreDNS, and keeps pods' DNS off conntrack and DNAT.
//
// Its TCP listeners are plain TCP, not the Multipath TCP Go gives
// listeners by default: a drain closes a listener to new connections with
// a socket filter before shutting it down (internal/sockets.Detach), which
// MPTCP sockets do not support, and DNS to a node-local address has one
// path.
//
//go:debug multipathtcp=0
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/node-local-coredns/node-local-coredns/internal/agent"
	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/metrics"
	"github.com/node-local-coredns/node-local-coredns/internal/server"
)

// version is set at link time (-X main.version=...).
var version = ""

func main() {
	// Not as root, the agent, the watchdog and status (its probe's mark, the
	// conntrack count) make their file capabilities effective, and pass the
	// iptables tools theirs.
	if err := agent.RaiseCapabilities(); err != nil {
		fmt.Fprintln(os.Stderr, "node-local-coredns:", err)
		os.Exit(1)
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(args) > 0 {
		switch args[0] {
		case "watchdog":
			return runWatchdog(args[1:], getenv, stderr, log)
		case "status":
			return runStatus(args[1:], getenv, stdout, stderr)
		}
	}
	if len(args) == 1 {
		switch args[0] {
		case "--version", "-version":
			fmt.Fprintln(stdout, "node-local-coredns", versionString())
			return 0
		case "--plugins", "-plugins":
			fmt.Fprintln(stdout, strings.Join(server.Plugins(), "\n"))
			return 0
		}
	}
	cfg, err := config.Parse(args, getenv, stderr)
	if code, done := parsed(err, stderr, "node-local-coredns"); done {
		return code
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("starting", "version", versionString(), "local_ips", cfg.LocalIPs, "upstreams", cfg.Upstreams,
		"interface", cfg.Interface, "setup_interface", cfg.SetupInterface, "setup_netfilter", cfg.SetupNetfilter)
	warnDeprecated(args, log)
	cfg = cfg.Sized(setMemoryLimit(cfg.MemoryLimit, log))
	log.Info("sized for the memory limit", "cache_success", cfg.SuccessCapacity, "cache_denial", cfg.DenialCapacity, "max_concurrent", cfg.MaxConcurrent)
	if err := metrics.Register(prometheus.DefaultRegisterer); err != nil {
		log.Error("registering metrics", "error", err)
		return 1
	}
	steps, err := agent.Steps(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "node-local-coredns:", err)
		return 1
	}
	if err := agent.New(steps, cfg.SyncInterval, agent.Peers(cfg), log).Run(ctx); err != nil {
		log.Error("exiting", "error", err)
		return 1
	}
	log.Info("stopped cleanly")
	return 0
}

// parsed turns a configuration error into the exit code (0 for --help, 2
// for a bad value, with one line on stderr); done is false when there was
// no error.
func parsed(err error, stderr io.Writer, command string) (code int, done bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, config.ErrHelp):
		return 0, true
	default:
		fmt.Fprintln(stderr, command+":", err)
		return 2, true
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
		if bi.Main.Version != "" {
			return bi.Main.Version
		}
	}
	return "dev"
}

// warnDeprecated says, once, that --iptables-mode is deprecated and what
// it now means.
func warnDeprecated(args []string, log *slog.Logger) {
	for _, a := range args {
		if name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "="); name == "iptables-mode" && strings.HasPrefix(a, "-") {
			log.Warn("--iptables-mode is deprecated: use --netfilter (legacy is iptables-legacy, nft is iptables-nft, auto is auto)")
			return
		}
	}
}
