package spread

import (
	"strconv"
	"sync"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "requests_total",
		Help: "The count of queries sent to each upstream: an endpoint of kube-dns, or the Service (kind=\"service\").",
	}, []string{"server", "to", "kind"})
	answers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "answers_total",
		Help: "The count of answers each upstream gave first, the ones sent to the client.",
	}, []string{"server", "to", "kind"})
	failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "upstream_failures_total",
		Help: "The count of queries an upstream did not answer: connection refused or reset, or no answer within the read timeout.",
	}, []string{"server", "to", "kind"})
	penalties = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "penalties_total",
		Help: "The count of times an endpoint was taken out of the rotation: it failed, or another endpoint asked after it answered first.",
	}, []string{"server", "to"})
	penalized = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "endpoint_penalized",
		Help: "1 while the endpoint is out of the rotation.",
	}, []string{"server", "to"})
	endpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "endpoints",
		Help: "The number of kube-dns endpoints known; 0 while queries go to the Service.",
	}, []string{"server"})
	hedges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "hedges_total",
		Help: "The count of attempts started because the one before had not answered within its limit.",
	}, []string{"server"})
	failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "failovers_total",
		Help: "The count of queries answered by another upstream than the first one asked.",
	}, []string{"server"})
	failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "failed_total",
		Help: "The count of queries no upstream answered (SERVFAIL).",
	}, []string{"server"})
	refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "refused_total",
		Help: "The count of queries refused because max_concurrent attempts were in flight.",
	}, []string{"server"})
	lookupErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "endpoint_lookup_failures_total",
		Help: "The count of lookups of the endpoints' name that got no answer (the last set known is kept).",
	}, []string{"server"})

	registerOnce sync.Once
)

func registerAll() {
	for _, c := range []prometheus.Collector{requests, answers, failures, penalties, penalized, endpoints, hedges, failovers, failed, refused, lookupErrors} {
		_ = prometheus.DefaultRegisterer.Register(c)
	}
}

// serverMetrics are one plugin instance's counters, resolved once.
type serverMetrics struct {
	server                                           string
	endpoints                                        prometheus.Gauge
	hedges, failovers, failed, refused, lookupErrors prometheus.Counter
}

func newServerMetrics(server string) *serverMetrics {
	registerOnce.Do(registerAll)
	return &serverMetrics{
		server:       server,
		endpoints:    endpoints.WithLabelValues(server),
		hedges:       hedges.WithLabelValues(server),
		failovers:    failovers.WithLabelValues(server),
		failed:       failed.WithLabelValues(server),
		refused:      refused.WithLabelValues(server),
		lookupErrors: lookupErrors.WithLabelValues(server),
	}
}

type upstreamMetrics struct {
	requests, answers, failures, penalties prometheus.Counter
	penalized                              prometheus.Gauge
	// The proxy package's series: connections reused and dialled, and the
	// time each answer took, by rcode (the usual two looked up once).
	connHits, connMisses prometheus.Counter
	to                   string
	noError, nameError   prometheus.Observer
}

// duration is the observer of the time answers of rcode took.
func (m *upstreamMetrics) duration(rcode int) prometheus.Observer {
	switch rcode {
	case dns.RcodeSuccess:
		return m.noError
	case dns.RcodeNameError:
		return m.nameError
	}
	rc, ok := dns.RcodeToString[rcode]
	if !ok {
		rc = strconv.Itoa(rcode)
	}
	return requestDuration.WithLabelValues(pluginName, m.to, rc)
}

func kind(service bool) string {
	if service {
		return "service"
	}
	return "endpoint"
}

func (m *serverMetrics) upstream(addr string, service bool) *upstreamMetrics {
	k := kind(service)
	return &upstreamMetrics{
		requests:   requests.WithLabelValues(m.server, addr, k),
		answers:    answers.WithLabelValues(m.server, addr, k),
		failures:   failures.WithLabelValues(m.server, addr, k),
		penalties:  penalties.WithLabelValues(m.server, addr),
		penalized:  penalized.WithLabelValues(m.server, addr),
		connHits:   connCacheHits.WithLabelValues(pluginName, addr, "tcp"),
		connMisses: connCacheMisses.WithLabelValues(pluginName, addr, "tcp"),
		to:         addr,
		noError:    requestDuration.WithLabelValues(pluginName, addr, dns.RcodeToString[dns.RcodeSuccess]),
		nameError:  requestDuration.WithLabelValues(pluginName, addr, dns.RcodeToString[dns.RcodeNameError]),
	}
}

// forget drops the series of an endpoint that is gone, so that a churn of
// endpoints does not grow the metrics.
func (m *serverMetrics) forget(addr string) {
	k := kind(false)
	requests.DeleteLabelValues(m.server, addr, k)
	answers.DeleteLabelValues(m.server, addr, k)
	failures.DeleteLabelValues(m.server, addr, k)
	penalties.DeleteLabelValues(m.server, addr)
	penalized.DeleteLabelValues(m.server, addr)
}
