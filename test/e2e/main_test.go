// Package e2e tests the real node-local-coredns binary on a simulated node:
// real network namespaces, real iptables and the kernel's conntrack.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/node-local-coredns/node-local-coredns/test/cluster"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// binary is the agent built once for all tests.
var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv(cluster.HookEnv) != "" {
		// podman runs this binary as the cluster harness's OCI hook.
		return cluster.RunPrecreateHook()
	}
	if why := nodesim.Supported(); why == "" {
		// Namespaces an earlier, killed run left behind.
		if err := nodesim.Sweep("nlc", "nlk"); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		dir, err := os.MkdirTemp("", "nlc-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "node-local-coredns")
		out, err := exec.Command("go", "build", "-o", binary, "../../cmd/node-local-coredns").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building the agent: %v\n%s", err, out)
			return 1
		}
	}
	code := m.Run()
	if doc := os.Getenv("RELIABILITY_DOC"); doc != "" && code == 0 {
		if err := writeReliabilityDoc(doc); err != nil {
			fmt.Fprintln(os.Stderr, "writing the reliability table:", err)
			return 1
		}
	}
	return code
}

// newNode builds a simulated node for t, or skips t (fails it when
// NODESIM_REQUIRED is set, as make test does) where that cannot be done.
func newNode(t *testing.T, o nodesim.Options) *nodesim.Node {
	t.Helper()
	if why := nodesim.Supported(); why != "" {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatalf("NODESIM_REQUIRED is set but %s", why)
		}
		t.Skipf("skipping namespace test: %s", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := nodesim.New(ctx, o)
	if err != nil {
		t.Fatalf("building the simulated node: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("removing the simulated node: %v", err)
		}
	})
	return n
}
