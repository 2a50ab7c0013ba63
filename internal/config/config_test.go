package config

import (
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

var podEnv = env(
	"KUBE_DNS_SERVICE_HOST", "172.27.255.78",
	"NODE_LOCAL_COREDNS_SERVICE_HOST", "172.27.255.79",
	"NODE_LOCAL_COREDNS_SERVICE_PORT_DNS", "53",
)

func TestParseResolvesFromEnvironment(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		getenv        func(string) string
		wantLocal     []string
		wantUpstreams []string
	}{
		{
			name:          "inside a pod, all defaults",
			getenv:        podEnv,
			wantLocal:     []string{"172.27.255.78"},
			wantUpstreams: []string{"172.27.255.79:53"},
		},
		{
			name:          "named port wins over the first port",
			getenv:        env("KUBE_DNS_SERVICE_HOST", "10.0.0.10", "NODE_LOCAL_COREDNS_SERVICE_HOST", "10.0.0.11", "NODE_LOCAL_COREDNS_SERVICE_PORT", "1053", "NODE_LOCAL_COREDNS_SERVICE_PORT_DNS", "5353"),
			wantLocal:     []string{"10.0.0.10"},
			wantUpstreams: []string{"10.0.0.11:5353"},
		},
		{
			name:          "unnamed port",
			getenv:        env("KUBE_DNS_SERVICE_HOST", "10.0.0.10", "NODE_LOCAL_COREDNS_SERVICE_HOST", "10.0.0.11", "NODE_LOCAL_COREDNS_SERVICE_PORT", "1053"),
			wantLocal:     []string{"10.0.0.10"},
			wantUpstreams: []string{"10.0.0.11:1053"},
		},
		{
			name:          "other upstream service",
			args:          []string{"--upstream-svc=kube-dns-upstream"},
			getenv:        env("KUBE_DNS_SERVICE_HOST", "10.0.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST", "10.0.0.12"),
			wantLocal:     []string{"10.0.0.10"},
			wantUpstreams: []string{"10.0.0.12:53"},
		},
		{
			name:          "flags override the environment, dual-stack, duplicates dropped",
			args:          []string{"--local-ip", "10.0.0.10, fd00::a,10.0.0.10", "--upstream", "10.0.0.11,[fd00::b]:5353,fd00::c"},
			getenv:        podEnv,
			wantLocal:     []string{"10.0.0.10", "fd00::a"},
			wantUpstreams: []string{"10.0.0.11:53", "[fd00::b]:5353", "[fd00::c]:53"},
		},
		{
			name:          "IPv6 ClusterIP from the environment",
			getenv:        env("KUBE_DNS_SERVICE_HOST", "fd00:96::a", "NODE_LOCAL_COREDNS_SERVICE_HOST", "fd00:96::b"),
			wantLocal:     []string{"fd00:96::a"},
			wantUpstreams: []string{"[fd00:96::b]:53"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, tc.getenv, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var local, ups []string
			for _, ip := range c.LocalIPs {
				local = append(local, ip.String())
			}
			for _, u := range c.Upstreams {
				ups = append(ups, u.String())
			}
			if !slices.Equal(local, tc.wantLocal) {
				t.Errorf("local IPs %v, want %v", local, tc.wantLocal)
			}
			if !slices.Equal(ups, tc.wantUpstreams) {
				t.Errorf("upstreams %v, want %v", ups, tc.wantUpstreams)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil, podEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		LocalIPs:        []netip.Addr{netip.MustParseAddr("172.27.255.78")},
		Upstreams:       []netip.AddrPort{netip.MustParseAddrPort("172.27.255.79:53")},
		UpstreamService: "node-local-coredns",
		Interface:       "nodelocaldns",
		ClusterDomain:   "cluster.local",
		Port:            53,
		SyncInterval:    10 * time.Second,
		ReloadInterval:  5 * time.Second,
		SetupInterface:  true,
		SetupNetfilter:  true,
		Netfilter:       "auto",
		HealthAddr:      "127.0.0.1:8080",
		ReadyAddr:       "127.0.0.1:8181",
		MetricsAddr:     ":9253",
		ServeStale:      time.Hour,
		ProbeMark:       0x200000,
		// SuccessCapacity, DenialCapacity: 0, from the memory limit (Sized).
	}
	if !slices.Equal(c.LocalIPs, want.LocalIPs) || !slices.Equal(c.Upstreams, want.Upstreams) {
		t.Fatalf("addresses: %+v", c)
	}
	c.LocalIPs, c.Upstreams, want.LocalIPs, want.Upstreams = nil, nil, nil, nil
	if !equalConfig(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func equalConfig(a, b Config) bool {
	return a.UpstreamService == b.UpstreamService && a.Interface == b.Interface && a.ClusterDomain == b.ClusterDomain &&
		a.Port == b.Port && a.CorefilePath == b.CorefilePath && a.SyncInterval == b.SyncInterval &&
		a.ReloadInterval == b.ReloadInterval && a.SetupInterface == b.SetupInterface && a.SetupNetfilter == b.SetupNetfilter &&
		a.DivertHostNetwork == b.DivertHostNetwork && a.Netfilter == b.Netfilter && a.HealthAddr == b.HealthAddr &&
		a.ReadyAddr == b.ReadyAddr && a.MetricsAddr == b.MetricsAddr && a.ServeStale == b.ServeStale && a.ProbeMark == b.ProbeMark &&
		a.SuccessCapacity == b.SuccessCapacity && a.DenialCapacity == b.DenialCapacity
}

// Every bad value names the flag to set, and the environment variable where
// the value would have come from there.
func TestParseErrorsNameFlagAndEnv(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		getenv   func(string) string
		wantFlag string
		wantEnv  string
	}{
		{name: "no kube-dns env", getenv: env("NODE_LOCAL_COREDNS_SERVICE_HOST", "10.0.0.11"), wantFlag: "local-ip", wantEnv: "KUBE_DNS_SERVICE_HOST"},
		{name: "bad kube-dns env", getenv: env("KUBE_DNS_SERVICE_HOST", "kube-dns", "NODE_LOCAL_COREDNS_SERVICE_HOST", "10.0.0.11"), wantFlag: "local-ip", wantEnv: "KUBE_DNS_SERVICE_HOST"},
		{name: "bad local ip flag", args: []string{"--local-ip=10.0.0.300"}, getenv: podEnv, wantFlag: "local-ip"},
		{name: "unspecified local ip", args: []string{"--local-ip=0.0.0.0"}, getenv: podEnv, wantFlag: "local-ip"},
		{name: "no upstream env", getenv: env("KUBE_DNS_SERVICE_HOST", "10.0.0.10"), wantFlag: "upstream", wantEnv: "NODE_LOCAL_COREDNS_SERVICE_HOST"},
		{name: "bad upstream port env", getenv: env("KUBE_DNS_SERVICE_HOST", "10.0.0.10", "NODE_LOCAL_COREDNS_SERVICE_HOST", "10.0.0.11", "NODE_LOCAL_COREDNS_SERVICE_PORT_DNS", "dns"), wantFlag: "upstream", wantEnv: "NODE_LOCAL_COREDNS_SERVICE_PORT_DNS"},
		{name: "bad upstream flag", args: []string{"--upstream=kube-dns:53"}, getenv: podEnv, wantFlag: "upstream"},
		{name: "upstream is a local ip", args: []string{"--upstream=172.27.255.78"}, getenv: podEnv, wantFlag: "upstream"},
		{name: "port zero", args: []string{"--port=0"}, getenv: podEnv, wantFlag: "port"},
		{name: "port too large", args: []string{"--port=70000"}, getenv: podEnv, wantFlag: "port"},
		{name: "interface name too long", args: []string{"--interface=averyveryverylongname"}, getenv: podEnv, wantFlag: "interface"},
		{name: "empty cluster domain", args: []string{"--cluster-domain=."}, getenv: podEnv, wantFlag: "cluster-domain"},
		// A newline would start a new line of the Corefile (found by
		// FuzzCorefileValues): "cluster.local\nwhoami" made a server block.
		{name: "newline in the cluster domain", args: []string{"--cluster-domain=cluster.local\nwhoami"}, getenv: podEnv, wantFlag: "cluster-domain"},
		{name: "quote in the cluster domain", args: []string{`--cluster-domain=clu"ster.local`}, getenv: podEnv, wantFlag: "cluster-domain"},
		{name: "UDP cap too small", args: []string{"--max-udp-size=512"}, getenv: podEnv, wantFlag: "max-udp-size"},
		{name: "UDP cap too large", args: []string{"--max-udp-size=65535"}, getenv: podEnv, wantFlag: "max-udp-size"},
		{name: "sync too often", args: []string{"--sync-interval=10ms"}, getenv: podEnv, wantFlag: "sync-interval"},
		{name: "reload too often", args: []string{"--reload-interval=1s"}, getenv: podEnv, wantFlag: "reload-interval"},
		{name: "bad iptables mode", args: []string{"--iptables-mode=ipvs"}, getenv: podEnv, wantFlag: "iptables-mode"},
		{name: "bad netfilter backend", args: []string{"--netfilter=ipvs"}, getenv: podEnv, wantFlag: "netfilter"},
		{name: "deprecated mode contradicts backend", args: []string{"--netfilter=nftables", "--iptables-mode=legacy"}, getenv: podEnv, wantFlag: "iptables-mode"},
		{name: "negative serve-stale", args: []string{"--serve-stale=-1s"}, getenv: podEnv, wantFlag: "serve-stale"},
		{name: "fractional serve-stale", args: []string{"--serve-stale=1.5s"}, getenv: podEnv, wantFlag: "serve-stale"},
		{name: "bad metrics address", args: []string{"--metrics-addr=9253"}, getenv: podEnv, wantFlag: "metrics-addr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, tc.getenv, io.Discard)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *config.Error", err)
			}
			if ce.Flag != tc.wantFlag || ce.Env != tc.wantEnv {
				t.Errorf("error names --%s/$%s, want --%s/$%s: %v", ce.Flag, ce.Env, tc.wantFlag, tc.wantEnv, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, "--"+tc.wantFlag) || (tc.wantEnv != "" && !strings.Contains(msg, "$"+tc.wantEnv)) || strings.Contains(msg, "\n") {
				t.Errorf("message %q must be one line naming --%s and $%s", msg, tc.wantFlag, tc.wantEnv)
			}
		})
	}
}

// TestNetfilterBackend: --netfilter picks the backend, and the deprecated
// --iptables-mode keeps meaning what it meant.
func TestNetfilterBackend(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "auto"},
		{[]string{"--netfilter=nftables"}, "nftables"},
		{[]string{"--netfilter=iptables-legacy"}, "iptables-legacy"},
		{[]string{"--iptables-mode=legacy"}, "iptables-legacy"},
		{[]string{"--iptables-mode=nft"}, "iptables-nft"},
		{[]string{"--iptables-mode=auto"}, "auto"},
		{[]string{"--netfilter=iptables-nft", "--iptables-mode=nft"}, "iptables-nft"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c, err := Parse(tc.args, podEnv, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.Netfilter != tc.want {
				t.Errorf("Netfilter = %q, want %q", c.Netfilter, tc.want)
			}
			w, err := ParseWatchdog(tc.args, podEnv, io.Discard)
			if err != nil || w.Netfilter != tc.want {
				t.Errorf("watchdog: Netfilter = %q, %v; want %q", w.Netfilter, err, tc.want)
			}
		})
	}
}

func TestParseUnknownFlagAndHelp(t *testing.T) {
	if _, err := Parse([]string{"--bogus"}, podEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown flag: %v", err)
	}
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, podEnv, &out); !errors.Is(err, ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "-local-ip") {
		t.Errorf("--help printed no flags: %q", out.String())
	}
	if _, err := Parse([]string{"extra"}, podEnv, io.Discard); err == nil {
		t.Error("a positional argument was accepted")
	}
}

// The caches and the misses in flight are sized from the memory limit as
// internal/config/memory.go's arithmetic says, within their bounds.
func TestSized(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		limit                   int64
		capacity, maxConcurrent int
	}{
		{0, DefaultCacheCapacity, DefaultMaxConcurrent},
		{128 * mib, 7424, 400},     // 0.40 L / (4 × 1.75 KiB); 0.15 L / (2 × 20 KiB)
		{256 * mib, 14848, 900},    // twice as much, rounded down
		{16 * mib, 768, 100},       // the smallest limits get the floor of misses in flight
		{1 * mib, 256, 100},        // one entry per shard at least
		{64 << 30, 1 << 20, 10000}, // the ceilings
	} {
		got := Config{}.Sized(tc.limit)
		if got.SuccessCapacity != tc.capacity || got.DenialCapacity != tc.capacity || got.MaxConcurrent != tc.maxConcurrent {
			t.Errorf("limit %d: capacities %d/%d, max_concurrent %d; want %d, %d", tc.limit, got.SuccessCapacity, got.DenialCapacity, got.MaxConcurrent, tc.capacity, tc.maxConcurrent)
		}
		if tc.limit > 0 {
			worst := float64(builtInCaches*got.SuccessCapacity*EntryCost + builtInForwards*got.MaxConcurrent*inflightCost)
			if worst > 0.55*float64(tc.limit) && tc.limit >= 64*mib {
				t.Errorf("limit %d: full caches and misses in flight may take %.0f bytes, more than 55%% of it", tc.limit, worst)
			}
		}
	}
	// Capacities given are kept.
	if got := (Config{SuccessCapacity: 7, DenialCapacity: 9}).Sized(128 << 20); got.SuccessCapacity != 7 || got.DenialCapacity != 9 {
		t.Errorf("given capacities changed: %d, %d", got.SuccessCapacity, got.DenialCapacity)
	}
}

func TestUpstreamEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
		err  string
	}{
		{"default", nil, "node-local-coredns-endpoints.kube-system.svc.cluster.local", ""},
		{"other cluster domain", []string{"--cluster-domain=k8s.example.org."}, "node-local-coredns-endpoints.kube-system.svc.k8s.example.org", ""},
		{"explicit upstream: none", []string{"--upstream=10.0.0.11"}, "", ""},
		{"explicit upstream and name", []string{"--upstream=10.0.0.11", "--upstream-endpoints=dns-eps.dns.svc.cluster.local."}, "dns-eps.dns.svc.cluster.local", ""},
		{"none", []string{"--upstream-endpoints=none"}, "", ""},
		{"not a name", []string{"--upstream-endpoints=a b"}, "", "--upstream-endpoints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, podEnv, io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.UpstreamEndpoints != tc.want {
				t.Errorf("endpoints name %q, want %q", c.UpstreamEndpoints, tc.want)
			}
		})
	}
}
