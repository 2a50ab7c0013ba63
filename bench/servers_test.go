package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

func TestSpreadToForward(t *testing.T) {
	tmpl, err := benchCorefile()
	if err != nil {
		t.Fatal(err)
	}
	text, err := corefile.Render("built-in", tmpl, corefile.Values{
		LocalIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort(upstreamAddr)},
		UpstreamEndpoints: "node-local-coredns-endpoints.kube-system.svc.cluster.local",
		ClusterDomain:     "cluster.local", Port: 5302, HealthAddr: "127.0.0.1:15302", ReadyAddr: "127.0.0.1:16302",
		MetricsAddr: "127.0.0.1:17302", ReloadInterval: 5 * time.Second, MaxConcurrent: 77,
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := spreadToForward(text)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got, "spread . ") || strings.Contains(got, "hedge ") {
		t.Errorf("spread left in:\n%s", got)
	}
	want := "forward . " + upstreamAddr + " {\n        force_tcp\n        read_timeout 900ms\n        max_connect_attempts 2\n        max_concurrent 77\n    }"
	if n := strings.Count(got, want); n != strings.Count(text, "spread . ") || n < 2 {
		t.Errorf("%d forward blocks for %d spread blocks:\n%s", n, strings.Count(text, "spread . "), got)
	}
	if _, err := spreadToForward("forward . 1.2.3.4\n"); err == nil {
		t.Error("a Corefile without spread: no error")
	}
}
