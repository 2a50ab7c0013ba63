package nodesim

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Dialer returns a dial function whose connections are made from
// namespace ns (they stay there, whichever goroutine uses them); "" is the
// process's own namespace.
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if ns == "" {
		return (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// HTTPClient returns a client whose connections are made from namespace ns.
func HTTPClient(ns string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: Dialer(ns)},
	}
}

// Get fetches url from namespace ns; a status other than 200 is an error.
func Get(ctx context.Context, ns, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := HTTPClient(ns, 5*time.Second).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, err
}

// Sample is one series of a metric: its labels and its value.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// MetricSeries fetches Prometheus metrics from url in namespace ns and
// returns every series of the counter or gauge name (none when absent); a
// histogram's series counts its observations.
func MetricSeries(ctx context.Context, ns, url, name string) ([]Sample, error) {
	body, err := Get(ctx, ns, url)
	if err != nil {
		return nil, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics of %s: %w", url, err)
	}
	var out []Sample
	for _, m := range families[name].GetMetric() {
		s := Sample{Labels: map[string]string{}}
		for _, l := range m.GetLabel() {
			s.Labels[l.GetName()] = l.GetValue()
		}
		switch {
		case m.Counter != nil:
			s.Value = m.GetCounter().GetValue()
		case m.Gauge != nil:
			s.Value = m.GetGauge().GetValue()
		case m.Untyped != nil:
			s.Value = m.GetUntyped().GetValue()
		case m.Histogram != nil:
			s.Value = float64(m.GetHistogram().GetSampleCount())
		}
		out = append(out, s)
	}
	return out, nil
}

// Metric fetches Prometheus metrics from url in namespace ns and returns
// the sum of every series of the counter or gauge name (0 when absent).
func Metric(ctx context.Context, ns, url, name string) (float64, error) {
	series, err := MetricSeries(ctx, ns, url, name)
	var sum float64
	for _, s := range series {
		sum += s.Value
	}
	return sum, err
}
