package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// podman and containerd (what kubelet drives) build a container's OCI
// spec differently where it matters to a non-root agent: podman gives a
// non-root process its added capabilities in the inheritable and ambient
// sets, so that they survive the exec without anything in the image;
// containerd leaves both empty (since the fix of CVE-2022-24769), so that a
// non-root process starts with no effective capabilities and only file
// capabilities in the image can give it some. podman also sets resource
// limits that runc applies with prlimit from outside the container, which
// this sandbox's root (without CAP_SYS_RESOURCE) may not do to another
// user's process; containerd sets none by default.
//
// The harness makes podman's spec containerd's with an OCI hook of the
// precreate stage (podman's extension: the hook reads the spec and writes
// the one to run): the test binary itself, run with HookEnv set.

// HookEnv is set in the environment of the test binary when podman runs it
// as the precreate hook; TestMain then calls RunPrecreateHook.
const HookEnv = "NODE_LOCAL_COREDNS_OCI_HOOK"

// RunPrecreateHook filters the OCI spec on standard input to standard
// output as ContainerdSpec does, and returns the exit code.
func RunPrecreateHook() int {
	if err := ContainerdSpec(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "precreate hook:", err)
		return 1
	}
	return 0
}

// ContainerdSpec copies an OCI runtime spec from in to out with the
// process's inheritable and ambient capabilities and its resource limits
// removed, as containerd leaves them. Everything else is kept as it is.
func ContainerdSpec(in io.Reader, out io.Writer) error {
	var spec map[string]any
	if err := json.NewDecoder(in).Decode(&spec); err != nil {
		return fmt.Errorf("reading the spec: %w", err)
	}
	if p, ok := spec["process"].(map[string]any); ok {
		delete(p, "rlimits")
		if c, ok := p["capabilities"].(map[string]any); ok {
			delete(c, "inheritable")
			delete(c, "ambient")
		}
	}
	return json.NewEncoder(out).Encode(spec)
}

// WriteHooks writes into dir the hook configuration that runs exe (the
// test binary, with HookEnv set) at the precreate stage of every
// container, and returns dir for Podman.HooksDir.
func WriteHooks(dir, exe string) (string, error) {
	hook := map[string]any{
		"version": "1.0.0",
		"hook": map[string]any{
			"path": exe,
			"args": []string{filepath.Base(exe)},
			"env":  []string{HookEnv + "=precreate"},
		},
		"when":   map[string]any{"always": true},
		"stages": []string{"precreate"},
	}
	b, err := json.Marshal(hook)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "containerd-spec.json"), b, 0o644)
}
