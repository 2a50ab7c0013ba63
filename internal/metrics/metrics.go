// Package metrics holds the agent's own Prometheus metrics. They are served
// next to CoreDNS's on the prometheus plugin's endpoint.
package metrics

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "node_local_coredns"

var (
	// SetupErrors counts failures of one setup step (interface, addresses,
	// rules, serving), labelled by step.
	SetupErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "setup_errors_total",
		Help:      "Failures of a setup or sync step, by step.",
	}, []string{"step"})

	// Restored counts things the sync loop found missing and put back.
	Restored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "restored_total",
		Help:      "Addresses or rules found missing by the sync loop and put back, by kind (address, rule).",
	}, []string{"kind"})

	// CorefileErrors counts Corefile templates refused at load or reload.
	CorefileErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "corefile_errors_total",
		Help:      "Corefile templates that did not render or parse; the running configuration kept serving.",
	})

	// SocketMatch is 1 when the PREROUTING rules are gated on a bound socket
	// (-m socket --nowildcard) and 0 when the kernel lacks the match and the
	// rules divert unconditionally.
	SocketMatch = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "socket_match",
		Help:      "1 when the diversion is gated on a bound socket, 0 when the kernel lacks the socket match.",
	})

	// NetfilterBackend is 1 for the backend the agent writes its rules
	// with (nftables, iptables-nft, iptables-legacy) and where its accept
	// rules go.
	NetfilterBackend = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "netfilter_backend",
		Help:      "1 for the rules backend in use (backend) and where the accept rules go (accept_rules).",
	}, []string{"backend", "accept_rules"})

	// RulesInstalled is 1 while the agent's rules are in place.
	RulesInstalled = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "rules_installed",
		Help:      "1 while the agent's NOTRACK/ACCEPT rules are in place.",
	})
)

var once sync.Once

// Register registers the agent's metrics with reg once; later calls are
// no-ops. A metric already registered (by an earlier run in the same
// process) is not an error.
func Register(reg prometheus.Registerer) error {
	var err error
	once.Do(func() {
		for _, c := range []prometheus.Collector{SetupErrors, Restored, CorefileErrors, SocketMatch, RulesInstalled, NetfilterBackend} {
			if e := reg.Register(c); e != nil && !errors.As(e, &prometheus.AlreadyRegisteredError{}) {
				err = errors.Join(err, e)
			}
		}
	})
	return err
}
