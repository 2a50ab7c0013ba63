// Package corefile renders the agent's Corefile from a Go text/template and
// typed values, and checks that the result parses as a Corefile.
package corefile

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"text/template"
	"time"

	"github.com/coredns/caddy/caddyfile"
)

// Default is the built-in Corefile template.
//
//go:embed default.tmpl
var Default string

// Values are what a template can use.
type Values struct {
	// LocalIPs are the addresses to bind.
	LocalIPs []netip.Addr
	// Upstreams receive cache misses.
	Upstreams []netip.AddrPort
	// UpstreamEndpoints is the headless Service's name whose records are
	// kube-dns's endpoints, the misses spread over them (empty: none).
	UpstreamEndpoints string
	// ClusterDomain is the cluster's DNS domain, without a trailing dot.
	ClusterDomain string
	// Port is the DNS port.
	Port uint16
	// HealthAddr, ReadyAddr and MetricsAddr are host:port listen addresses.
	HealthAddr, ReadyAddr, MetricsAddr string
	// ReloadInterval is how often the reload plugin checks for a change.
	ReloadInterval time.Duration
	// SuccessCapacity and DenialCapacity size the caches.
	SuccessCapacity, DenialCapacity int
	// ServeStale is how long expired entries are served while the upstream
	// does not answer; 0 disables serve-stale.
	ServeStale time.Duration
	// MaxUDPSize caps UDP answers (the bufsize plugin), in bytes.
	MaxUDPSize int
	// MissRate is how many queries a second a client may send past the
	// cache (the misslimit plugin, bursts of twice as many); 0: no limit.
	MissRate int
	// MaxConcurrent bounds the queries each block has in flight to kube-dns
	// (0: 1000).
	MaxConcurrent int
}

var funcs = template.FuncMap{
	// mul multiplies two numbers.
	"mul": func(a, b int) int { return a * b },
	// join formats each element of a slice with its String method and
	// joins them with sep.
	"join": func(list any, sep string) (string, error) {
		v := reflect.ValueOf(list)
		if v.Kind() != reflect.Slice {
			return "", fmt.Errorf("join: %T is not a list", list)
		}
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, sep), nil
	},
}

// Render executes the template text with v and checks that the result is a
// Corefile that parses. name is used in error messages (a file path or
// "built-in").
func Render(name, text string, v Values) (string, error) {
	t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return "", fmt.Errorf("parsing template %s: %w", name, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		return "", fmt.Errorf("rendering template %s: %w", name, err)
	}
	out := buf.String()
	if err := Check(name, out); err != nil {
		return "", err
	}
	return out, nil
}

// Check parses a rendered Corefile and reports syntax errors; it does not
// set up plugins.
func Check(name, corefile string) error {
	blocks, err := caddyfile.Parse(name, strings.NewReader(corefile), nil)
	if err != nil {
		return fmt.Errorf("parsing rendered Corefile from %s: %w", name, err)
	}
	if len(blocks) == 0 {
		return fmt.Errorf("parsing rendered Corefile from %s: no server blocks", name)
	}
	return nil
}
