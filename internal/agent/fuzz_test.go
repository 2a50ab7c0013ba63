package agent

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy/caddyfile"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
)

// shape is a Corefile's structure: each server block's directives, in
// order, and how many keys (zones) it has.
func shape(t *testing.T, corefile string) string {
	t.Helper()
	blocks, err := caddyfile.Parse("fuzz", strings.NewReader(corefile), nil)
	if err != nil {
		t.Fatalf("a rendered Corefile does not parse: %v\n%s", err, corefile)
	}
	var b strings.Builder
	for _, blk := range blocks {
		names := make([]string, 0, len(blk.Tokens))
		for name := range blk.Tokens {
			names = append(names, name)
		}
		slices.Sort(names)
		fmt.Fprintf(&b, "%d keys: %s\n", len(blk.Keys), strings.Join(names, " "))
	}
	return b.String()
}

// FuzzCorefileValues: whatever the flags and the service environment say
// (a ConfigMap or a pod's environment is input too), the agent either
// refuses them with a flag error or renders the built-in Corefile with the
// same server blocks and directives as for ordinary values: no value can
// add a block, a directive or a zone (such as a newline in the cluster
// domain followed by "import").
func FuzzCorefileValues(f *testing.F) {
	benign := func(t *testing.T) string {
		cfg, err := config.Parse([]string{"--upstream=10.96.0.11"}, func(k string) string {
			return map[string]string{"KUBE_DNS_SERVICE_HOST": "10.96.0.10"}[k]
		}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		out, err := renderCorefile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return shape(t, out)
	}
	for _, seed := range [][4]string{
		{"cluster.local", "10.96.0.10", "10.96.0.11", "53"},
		{"k8s.example.org.", "10.96.0.10,fd00:96::a", "10.96.0.11:5353,[fd00:96::b]:53", "5353"},
		{"cluster.local\nimport /etc/passwd", "10.96.0.10", "10.96.0.11", "53"},
		{"cluster.local\nwhoami", "10.96.0.10", "10.96.0.11", "53"},
		{"a}b", "10.96.0.10 {", "10.96.0.11", "53"},
		{"cluster.local", "10.96.0.10", "10.96.0.11 }\n. {\n whoami", "53"},
		{"x", "::", "1.2.3.4:0", "0"},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	f.Fuzz(func(t *testing.T, domain, localIP, upstream, envPort string) {
		want := benign(t)
		cfg, err := config.Parse([]string{"--cluster-domain=" + domain, "--local-ip=" + localIP}, func(k string) string {
			return map[string]string{
				"KUBE_DNS_SERVICE_HOST":               localIP,
				"NODE_LOCAL_COREDNS_SERVICE_HOST":     upstream,
				"NODE_LOCAL_COREDNS_SERVICE_PORT_DNS": envPort,
			}[k]
		}, io.Discard)
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Flag == "" {
				t.Fatalf("a bad value gave an error that names no flag: %v", err)
			}
			return
		}
		out, err := renderCorefile(cfg)
		if err != nil {
			t.Fatalf("values config.Parse accepted do not render: %v (%+v)", err, cfg)
		}
		// The zone keys carry the domain; the shape ignores their names.
		if got := shape(t, out); got != want {
			t.Fatalf("domain %q, local IP %q, upstream %q, port %q changed the Corefile's shape:\n%s\nwant\n%s\n%s", domain, localIP, upstream, envPort, got, want, out)
		}
	})
}
