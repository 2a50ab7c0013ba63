package fastcache

import (
	"testing"
	"time"

	"github.com/coredns/caddy"
)

// TestParseOptions: what the fast path reads of a block CoreDNS's cache has
// validated. (Reading an option's name after its arguments once left every
// option with arguments unread: the default capacity, no stale TTL.)
func TestParseOptions(t *testing.T) {
	const s, h = time.Second, time.Hour
	for _, tc := range []struct {
		name, block string
		want        options
	}{
		{"defaults", "fastcache", options{percentage: 10, successCap: defaultCap, denialCap: defaultCap, retention: 3600 * s, storeMisses: true,
			successTTL: 3600 * s, minSuccessTTL: 5 * s, denialTTL: 1800 * s, minDenialTTL: 5 * s}},
		{"one TTL for both", "fastcache 30", options{percentage: 10, successCap: defaultCap, denialCap: defaultCap, retention: 30 * s, storeMisses: true,
			successTTL: 30 * s, minSuccessTTL: 5 * s, denialTTL: 30 * s, minDenialTTL: 5 * s}},
		{"zones of its own", "fastcache 30 example.org", options{percentage: 10, successCap: defaultCap, denialCap: defaultCap, retention: 30 * s,
			successTTL: 30 * s, minSuccessTTL: 5 * s, denialTTL: 30 * s, minDenialTTL: 5 * s}},
		{"the built-in Corefile's", "fastcache {\n success 9984 30\n denial 9984 5\n serve_stale 1h verify 500ms 30s 30s\n}",
			options{percentage: 10, successCap: 9984, denialCap: 9984, staleTTL: 30, staleUpTo: h, verify: true,
				verifyTimeout: 500 * time.Millisecond, staleRecheck: 30 * s, retention: 30*s + h, storeMisses: true,
				successTTL: 30 * s, minSuccessTTL: 5 * s, denialTTL: 5 * s, minDenialTTL: 5 * s}},
		{"minimum TTLs", "fastcache {\n success 100 60 10\n denial 50 20 0\n servfail 5s\n}",
			options{percentage: 10, successCap: 100, denialCap: 50, retention: 60 * s, storeMisses: true,
				successTTL: 60 * s, minSuccessTTL: 10 * s, denialTTL: 20 * s, minDenialTTL: 0}},
		{"serve_stale immediate", "fastcache {\n serve_stale 10m immediate 5s\n}", options{percentage: 10, successCap: defaultCap, denialCap: defaultCap,
			staleTTL: 5, staleUpTo: 10 * time.Minute, retention: 3600*s + 10*time.Minute, storeMisses: true,
			successTTL: 3600 * s, minSuccessTTL: 5 * s, denialTTL: 1800 * s, minDenialTTL: 5 * s}},
		{"prefetch", "fastcache {\n success 1000\n prefetch 2 1m 20%\n}", options{percentage: 20, prefetch: 2, successCap: 1000, denialCap: defaultCap,
			retention: 3600 * s, successTTL: 3600 * s, minSuccessTTL: 5 * s, denialTTL: 1800 * s, minDenialTTL: 5 * s}},
		{"keepttl", "fastcache {\n keepttl\n}", options{percentage: 10, keepTTL: true, successCap: defaultCap, denialCap: defaultCap, retention: 3600 * s,
			successTTL: 3600 * s, minSuccessTTL: 5 * s, denialTTL: 1800 * s, minDenialTTL: 5 * s}},
		{"disable", "fastcache {\n disable denial example.org\n}", options{percentage: 10, successCap: defaultCap, denialCap: defaultCap, retention: 3600 * s,
			successTTL: 3600 * s, minSuccessTTL: 5 * s, denialTTL: 1800 * s, minDenialTTL: 5 * s}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := caddy.NewTestController("dns", tc.block)
			got, err := parseOptions(&c.Dispenser)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
