package corefile

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func values() Values {
	return Values{
		LocalIPs:          []netip.Addr{netip.MustParseAddr("172.27.255.78")},
		Upstreams:         []netip.AddrPort{netip.MustParseAddrPort("172.27.255.79:53")},
		UpstreamEndpoints: "node-local-coredns-endpoints.kube-system.svc.cluster.local",
		ClusterDomain:     "cluster.local",
		Port:              53,
		HealthAddr:        "127.0.0.1:8080",
		ReadyAddr:         "127.0.0.1:8181",
		MetricsAddr:       ":9253",
		ReloadInterval:    5 * time.Second,
		ServeStale:        time.Hour,
		MaxUDPSize:        1232,
		MissRate:          500,
		SuccessCapacity:   9984,
		DenialCapacity:    9984,
	}
}

func TestRenderDefaultGolden(t *testing.T) {
	dual := values()
	dual.LocalIPs = append(dual.LocalIPs, netip.MustParseAddr("fd00:96::a"))
	dual.Upstreams = append(dual.Upstreams, netip.MustParseAddrPort("[fd00:96::b]:53"))
	custom := values()
	custom.ClusterDomain = "k8s.example.org"
	custom.Port = 5353
	custom.MetricsAddr = "127.0.0.1:19253"
	custom.ReloadInterval = time.Minute
	custom.ServeStale = 0
	custom.MaxUDPSize = 4096
	custom.MissRate = 0
	custom.UpstreamEndpoints = ""
	for _, tc := range []struct {
		golden string
		v      Values
	}{
		{"default-ipv4.golden", values()},
		{"default-dual-stack.golden", dual},
		{"default-custom.golden", custom},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := Render("built-in", Default, tc.v)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("rendered Corefile differs from %s (go test -update rewrites it):\n%s", path, got)
			}
		})
	}
}

// The built-in Corefile keeps the properties the design promises.
func TestDefaultProperties(t *testing.T) {
	got, err := Render("built-in", Default, values())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {",
		"bind 172.27.255.78\n",
		"success 9984 30",
		"denial 9984 5",
		"serve_stale 1h0m0s verify 500ms 30s 30s", // RFC 8767: a stale answer's TTL is 30 s, never 0
		"spread . 172.27.255.79:53 {\n        endpoints node-local-coredns-endpoints.kube-system.svc.cluster.local\n",
		"hedge 100ms 500ms\n        read_timeout 900ms\n", // SERVFAIL within 2 s
		".:53 {",
		"bufsize 1232", // UDP answers capped (DNS Flag Day 2020)
		"health 127.0.0.1:8080", "ready 127.0.0.1:8181", "prometheus :9253", "loop", "reload 5s", "errors",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("built-in Corefile lacks %q", want)
		}
	}
	// Every block sends its misses with spread, which speaks TCP only: no
	// forwarder's UDP port for a forged answer to aim at.
	if n, fwd := strings.Count(got, "spread ."), strings.Count(got, "forward "); n != 2 || fwd != 0 {
		t.Errorf("%d spread and %d forward plugins; want 2 spread", n, fwd)
	}
	if n := strings.Count(got, "max_concurrent 1000"); n != 2 { // the Values leave it to the template's default
		t.Errorf("max_concurrent in %d blocks, want both: misses in flight must be bounded", n)
	}
	if n := strings.Count(got, "misslimit 500 1000"); n != 2 {
		t.Errorf("misslimit in %d server blocks, want the 2 that answer clients", n)
	}
	if n := strings.Count(got, "timeouts {\n        read 1s\n        write 2s\n        idle 2s\n    }"); n != 2 {
		t.Errorf("short TCP timeouts in %d server blocks, want the 2 that answer clients", n)
	}
	if n := strings.Count(got, "bufsize 1232"); n != 2 {
		t.Errorf("bufsize in %d server blocks, want the 2 that answer clients", n)
	}
	if strings.Contains(got, "/etc/resolv.conf") {
		t.Error("the built-in Corefile must send every name to kube-dns, not to the node's resolv.conf")
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"template syntax", ".:53 {\n  forward . {{ .Upstreams \n}", "parsing template"},
		{"unknown value", ".:53 {\n  forward . {{ .Nope }}\n}", "rendering template"},
		{"unbalanced braces", ".:{{ .Port }} {\n  errors\n", "parsing rendered Corefile"},
		{"empty", "{{/* nothing */}}", "no server blocks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render("t", tc.text, values())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
