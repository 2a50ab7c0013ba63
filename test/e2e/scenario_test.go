package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

func TestScenarioProbe(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	a := startAgent(t, n, "--sync-interval=1s")
	spec := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: 400, Duration: 4 * time.Second, MissEvery: 10, TCPEvery: 7}
	done := make(chan *nodesim.Report)
	go func() { done <- n.Load(context.Background(), spec) }()
	time.Sleep(2 * time.Second)
	_ = a.Signal(syscall.SIGTERM)
	rep := <-done
	t.Log(rep.Summary())
	for _, o := range rep.Failed() {
		t.Log(o)
	}
}
