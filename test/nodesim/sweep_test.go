package nodesim

import (
	"os"
	"os/exec"
	"testing"
)

// Sweep removes the namespaces of a process that is gone, and only those.
func TestSweep(t *testing.T) {
	if why := Supported(); why != "" {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatalf("NODESIM_REQUIRED is set but %s", why)
		}
		t.Skipf("skipping namespace test: %s", why)
	}
	// pid 1 runs; a pid above the kernel's maximum never does.
	stale, live, other := "nlcsweep-4194305-aa-node", "nlcsweep-1-bb-node", "nlcsweepother-4194305-cc-node"
	for _, ns := range []string{stale, live, other} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	if err := Sweep("nlcsweep"); err != nil {
		t.Fatal(err)
	}
	exists := func(ns string) bool {
		_, err := os.Stat("/var/run/netns/" + ns)
		return err == nil
	}
	if exists(stale) {
		t.Error("the stale namespace is still there")
	}
	if !exists(live) || !exists(other) {
		t.Error("Sweep removed a namespace of a live process or of another prefix")
	}
}
