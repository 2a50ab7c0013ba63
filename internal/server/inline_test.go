package server

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

// TestReaderNeverWaits: a miss goes on in the fast path's reader until it
// waits for kube-dns (package coro), and the wait does not hold the reader:
// while a miss, and an expired answer of CoreDNS's cache (too large for the
// fast path's store), wait for a slow kube-dns, a cached name is answered.
func TestReaderNeverWaits(t *testing.T) {
	const slow = 700 * time.Millisecond
	up := startBigUpstream(t, slow)
	// Answers expire after a second.
	text := strings.ReplaceAll(corefile.Default, "success {{ .SuccessCapacity }} 30", "success {{ .SuccessCapacity }} 1 1")
	if text == corefile.Default {
		t.Fatal("the built-in Corefile's success TTL is not where the test looks for it")
	}
	addr := startBuiltInText(t, up.addr, text)
	exchange := func(name string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, addr)
		return r, err
	}
	if _, err := exchange("big.example.org."); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // big.example.org. expires
	if _, err := exchange("cached.example.org."); err != nil {
		t.Fatal(err)
	}
	for _, slowName := range []string{"big.example.org.", "new.example.org."} {
		type answer struct {
			name string
			err  error
		}
		order := make(chan answer, 2)
		go func() {
			_, err := exchange(slowName)
			order <- answer{slowName, err}
		}()
		time.Sleep(50 * time.Millisecond) // the slow query waits for kube-dns
		_, err := exchange("cached.example.org.")
		order <- answer{"cached.example.org.", err}
		first, second := <-order, <-order
		if first.err != nil || second.err != nil {
			t.Fatalf("%s: %v; %s: %v", first.name, first.err, second.name, second.err)
		}
		if first.name != "cached.example.org." {
			t.Errorf("the cached name was answered after %s, which waited for kube-dns: the reader waited with it", slowName)
		}
	}
}
