package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestCandidates(t *testing.T) {
	for _, tc := range []struct {
		name, ns string
		want     []string
	}{
		{"svc-1", "ns-0", []string{"svc-1.ns-0.svc.cluster.local.", "svc-1.svc.cluster.local.", "svc-1.cluster.local.", "svc-1."}},
		{"api-3.example.com", "ns-2", []string{"api-3.example.com.ns-2.svc.cluster.local.", "api-3.example.com.svc.cluster.local.",
			"api-3.example.com.cluster.local.", "api-3.example.com."}},
		// five dots: asked as it is.
		{"a.b.c.d.e.f", "ns-0", []string{"a.b.c.d.e.f."}},
	} {
		if got := candidates(tc.name, tc.ns); !slices.Equal(got, tc.want) {
			t.Errorf("candidates(%q, %q) = %q, want %q", tc.name, tc.ns, got, tc.want)
		}
	}
}

func TestModelAnswered(t *testing.T) {
	m := nodePods
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"svc-1.ns-0.svc.cluster.local.", true},
		{"SVC-19.NS-9.svc.cluster.local.", true},
		{"svc-20.ns-0.svc.cluster.local.", false}, // past the Services of a namespace
		{"svc-1.ns-10.svc.cluster.local.", false}, // no such namespace
		{"svc-01.ns-0.svc.cluster.local.", false},
		{"svc-1.ns-0.ns-0.svc.cluster.local.", false},
		{"svc-1.svc.cluster.local.", false},
		{"svc-1.cluster.local.", false},
		{"api-3.example.com.ns-2.svc.cluster.local.", false},
		{"api-3.example.com.", true},
		{"api-2000.example.com.", false},
		{"nx-3.example.com.", false},
		{"svc-1.", false},
	} {
		if got := m.answered(tc.name); got != tc.want {
			t.Errorf("answered(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStream checks the stream walks the search path as glibc does: A and
// AAAA for each candidate, stopping at the first answered one, and that it
// holds every kind of lookup in about its share.
func TestStream(t *testing.T) {
	m := nodePods
	lines := m.stream(200000, 7)
	if len(lines) != 200000 {
		t.Fatalf("%d lines", len(lines))
	}
	if !slices.Equal(lines, m.stream(200000, 7)) {
		t.Error("the same seed gave another stream")
	}
	kinds := map[string]int{}
	var lookups int
	for i := 0; i+1 < len(lines); {
		// A lookup: pairs of (A, AAAA) for one candidate each, the first
		// candidate under the pod's namespace.
		name, typ, _ := strings.Cut(lines[i], " ")
		if typ != "A" || lines[i+1] != name+" AAAA" {
			t.Fatalf("line %d: %q then %q, want an A and AAAA pair", i, lines[i], lines[i+1])
		}
		rest, ok := strings.CutSuffix(name, ".svc.cluster.local.")
		if !ok {
			t.Fatalf("line %d: %q: a lookup starts with its pod's namespace's candidate", i, name)
		}
		dot := strings.LastIndexByte(rest, '.')
		base, ns := rest[:dot], rest[dot+1:]
		want := candidates(base, ns)
		n := 0
		for n < len(want) && i+1 < len(lines) {
			if lines[i] != want[n]+" A" || lines[i+1] != want[n]+" AAAA" {
				t.Fatalf("line %d: %q, want %q", i, lines[i], want[n]+" A")
			}
			i += 2
			n++
			if m.answered(want[n-1]) {
				break
			}
		}
		if i+1 >= len(lines) {
			break // the stream's end cuts the last lookup
		}
		lookups++
		switch {
		case strings.HasPrefix(base, "api-"):
			kinds["external"]++
			if n != 4 {
				t.Errorf("%s: %d candidates asked, want 4", base, n)
			}
		case strings.HasPrefix(base, "nx-"):
			kinds["missing"]++
			if n != 4 {
				t.Errorf("%s: %d candidates asked, want 4", base, n)
			}
		case strings.Contains(base, "."):
			kinds["other namespace"]++
			if n != 2 {
				t.Errorf("%s: %d candidates asked, want 2", base, n)
			}
		default:
			kinds["own namespace"]++
			if n != 1 {
				t.Errorf("%s: %d candidates asked, want 1", base, n)
			}
		}
	}
	for kind, share := range map[string]int{"own namespace": m.share[0], "other namespace": m.share[1], "external": m.share[2], "missing": m.share[3]} {
		got := 100 * float64(kinds[kind]) / float64(lookups)
		if got < float64(share)*0.9 || got > float64(share)*1.1 {
			t.Errorf("%s: %.1f %% of lookups, want about %d %%", kind, got, share)
		}
	}
}

type recorder struct {
	dns.ResponseWriter
	m *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error { r.m = m; return nil }

func TestKubeDNSAnswers(t *testing.T) {
	k := &kubeDNS{model: nodePods}
	for _, tc := range []struct {
		name    string
		qtype   uint16
		rcode   int
		answers int
		soa     string // the zone of the SOA in the authority section
	}{
		{"svc-1.ns-0.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, 1, ""},
		{"svc-1.ns-0.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, 0, "cluster.local."},
		{"svc-1.ns-0.ns-1.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, 0, "cluster.local."},
		{"api-3.example.com.", dns.TypeA, dns.RcodeSuccess, 1, ""},
		{"api-3.example.com.", dns.TypeAAAA, dns.RcodeSuccess, 1, ""},
		{"nx-3.example.com.", dns.TypeAAAA, dns.RcodeNameError, 0, "example.com."},
	} {
		r := new(dns.Msg)
		r.SetQuestion(tc.name, tc.qtype)
		w := &recorder{}
		k.ServeDNS(w, r)
		if w.m == nil || w.m.Rcode != tc.rcode || len(w.m.Answer) != tc.answers {
			t.Errorf("%s %s: %v", tc.name, dns.TypeToString[tc.qtype], w.m)
			continue
		}
		for _, rr := range w.m.Answer {
			if rr.Header().Ttl != kubeDNSTTL {
				t.Errorf("%s: TTL %d", tc.name, rr.Header().Ttl)
			}
		}
		if tc.soa != "" {
			soa, ok := w.m.Ns[0].(*dns.SOA)
			if len(w.m.Ns) != 1 || !ok || soa.Hdr.Name != tc.soa || soa.Minttl != kubeDNSTTL {
				t.Errorf("%s %s: authority %v", tc.name, dns.TypeToString[tc.qtype], w.m.Ns)
			}
		}
	}
	if k.queries.Load() != 6 {
		t.Errorf("%d queries counted, want 6", k.queries.Load())
	}
}

func TestFormatCount(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 3584: "3,584", 1048576: "1,048,576"} {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%d) = %q, want %q", n, got, want)
		}
	}
}
