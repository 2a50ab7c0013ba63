package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/node-local-coredns/node-local-coredns/internal/agent"
	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/watchdog"
)

// runWatchdog is the watchdog command: it probes the agent and takes the
// node off it while it is silent.
func runWatchdog(args []string, getenv func(string) string, stderr io.Writer, log *slog.Logger) int {
	cfg, err := config.ParseWatchdog(args, getenv, stderr)
	if code, done := parsed(err, stderr, "node-local-coredns watchdog"); done {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	warnDeprecated(args, log)
	nf, err := agent.ChooseNetfilter(ctx, cfg.Netfilter, cfg.LocalIPs, log)
	if err != nil {
		fmt.Fprintln(stderr, "node-local-coredns watchdog:", err)
		return 1
	}
	fencers, err := nf.Fencers()
	if err != nil {
		fmt.Fprintln(stderr, "node-local-coredns watchdog:", err)
		return 1
	}
	var addrs []netip.AddrPort
	for _, ip := range cfg.LocalIPs {
		addrs = append(addrs, netip.AddrPortFrom(ip, cfg.Port))
	}
	if cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(watchdog.Fenced, watchdog.Fences, watchdog.ProbeFailures)
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			fmt.Fprintln(stderr, "node-local-coredns watchdog: --metrics-addr:", err)
			return 1
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln) //nolint:errcheck // ends with Close
		defer srv.Close()
	}
	w := watchdog.New(watchdog.Config{
		Addrs: addrs, Interval: cfg.Interval, Timeout: cfg.Timeout, Silence: cfg.Silence,
	}, watchdog.UDPProber(cfg.ProbeMark), fencers, log)
	if err := w.Run(ctx); err != nil {
		log.Error("exiting", "error", err)
		return 1
	}
	return 0
}
