// Package watchdog takes the node off a hung agent. It runs outside the
// serving process, probes the local IPs with real queries, and while the
// agent stays silent it fences it off: DNS to the local IPs is tracked and
// DNAT'ed to kube-dns again. It holds no state the node depends on: if the
// watchdog dies, the node keeps resolving as before.
package watchdog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
)

// ProbeName is the name the watchdog asks: the built-in Corefile answers it
// locally (whoami), so a kube-dns outage does not look like a hung agent.
const ProbeName = "node-local-coredns.invalid."

// Config is the watchdog's configuration.
type Config struct {
	// Addrs are the agent's listen addresses.
	Addrs []netip.AddrPort
	// Interval between probes.
	Interval time.Duration
	// Timeout of one probe.
	Timeout time.Duration
	// Silence is how long the agent may not answer before it is fenced off.
	Silence time.Duration
}

// Prober sends one probe to addr and returns nil if any answer came back.
type Prober func(ctx context.Context, addr netip.AddrPort) error

// Watchdog watches one agent.
type Watchdog struct {
	cfg     Config
	probe   Prober
	fencers []netfilter.Fencer
	log     *slog.Logger
	now     func() time.Time

	fenced bool
	lastOK time.Time
}

// Metrics of the watchdog.
var (
	Fenced = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "node_local_coredns", Subsystem: "watchdog", Name: "fenced",
		Help: "1 while the watchdog has taken the node off a silent agent (DNS goes to kube-dns through DNAT).",
	})
	Fences = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "node_local_coredns", Subsystem: "watchdog", Name: "fences_total",
		Help: "Times the watchdog took the node off a silent agent.",
	})
	ProbeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "node_local_coredns", Subsystem: "watchdog", Name: "probe_failures_total",
		Help: "Probes the agent did not answer in time.",
	})
)

// New returns a Watchdog that probes with probe and fences through fencers
// (one per address family in use).
func New(cfg Config, probe Prober, fencers []netfilter.Fencer, log *slog.Logger) *Watchdog {
	return &Watchdog{cfg: cfg, probe: probe, fencers: fencers, log: log, now: time.Now}
}

// Run probes every interval until ctx is done. A fence left by an earlier
// watchdog is taken over. On exit a fence stays only while the agent is
// silent.
func (w *Watchdog) Run(ctx context.Context) error {
	w.lastOK = w.now()
	w.fenced = w.fencePresent()
	w.log.Info("watching", "addrs", w.cfg.Addrs, "silence", w.cfg.Silence, "fenced", w.fenced)
	tick := time.NewTicker(w.cfg.Interval)
	defer tick.Stop()
	for {
		w.Step(ctx)
		select {
		case <-ctx.Done():
			if w.fenced && w.now().Sub(w.lastOK) < w.cfg.Silence {
				return w.unfence()
			}
			return nil
		case <-tick.C:
		}
	}
}

// Step probes once and fences or unfences.
func (w *Watchdog) Step(ctx context.Context) {
	alive := w.probeAll(ctx)
	now := w.now()
	switch {
	case alive:
		w.lastOK = now
		if w.fenced {
			if err := w.unfence(); err != nil {
				w.log.Error("unfencing", "error", err)
				return
			}
			w.log.Info("agent answers again: node back on it")
		}
	case now.Sub(w.lastOK) >= w.cfg.Silence:
		// (Re)apply the fence every step while silent: its jump must stay
		// first in raw PREROUTING.
		if err := w.fence(); err != nil {
			w.log.Error("fencing", "error", err)
			return
		}
		if !w.fenced {
			w.fenced = true
			Fences.Inc()
			Fenced.Set(1)
			w.log.Warn("agent silent: node taken off it, DNS goes to kube-dns", "silent_for", now.Sub(w.lastOK).Round(time.Millisecond))
		}
	}
}

func (w *Watchdog) probeAll(ctx context.Context) bool {
	for _, a := range w.cfg.Addrs {
		pctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		err := w.probe(pctx, a)
		cancel()
		if err != nil {
			ProbeFailures.Inc()
			return false
		}
	}
	return true
}

func (w *Watchdog) fence() error {
	var ips []netip.Addr
	for _, a := range w.cfg.Addrs {
		ips = append(ips, a.Addr())
	}
	var errs []error
	for _, t := range w.fencers {
		errs = append(errs, t.Fence(ips, w.cfg.Addrs[0].Port()))
	}
	return errors.Join(errs...)
}

func (w *Watchdog) unfence() error {
	var errs []error
	for _, t := range w.fencers {
		errs = append(errs, t.Unfence())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	w.fenced = false
	Fenced.Set(0)
	return nil
}

func (w *Watchdog) fencePresent() bool {
	for _, t := range w.fencers {
		if ok, err := t.Fenced(); err == nil && ok {
			return true
		}
	}
	return false
}

// UDPProber returns a Prober that counts any answer to Probe as alive.
func UDPProber(mark uint32) Prober {
	return func(ctx context.Context, addr netip.AddrPort) error {
		_, _, err := Probe(ctx, addr, mark)
		return err
	}
}

// Probe asks ProbeName A of addr over UDP from a socket that carries the
// firewall mark (setting it needs CAP_NET_ADMIN; 0 sets none), within ctx's
// deadline, and returns the answer and its round trip.
func Probe(ctx context.Context, addr netip.AddrPort, mark uint32) (*dns.Msg, time.Duration, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if mark != 0 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
			}
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return nil, 0, fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion(ProbeName, dns.TypeA)
	start := time.Now()
	if err := c.WriteMsg(m); err != nil {
		return nil, 0, err
	}
	for {
		r, err := c.ReadMsg()
		if err != nil {
			return nil, 0, err
		}
		if r.Id == m.Id {
			return r, time.Since(start), nil
		}
	}
}
