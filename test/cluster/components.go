package cluster

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// Components are the paths of the real components' binaries and the
// versions they were built at.
type Components struct {
	APIServer, KubeProxy, Etcd, CoreDNS string
	// Versions maps each module path (k8s.io/kubernetes, ...) to its version.
	Versions map[string]string
}

// String names the versions, for the test log.
func (c Components) String() string {
	return fmt.Sprintf("kube-apiserver and kube-proxy %s, etcd %s, CoreDNS %s",
		c.Versions["k8s.io/kubernetes"], c.Versions["go.etcd.io/etcd/server/v3"], c.Versions["github.com/coredns/coredns"])
}

// component is one binary built from one of the nested modules in
// components/.
type component struct {
	module string // the nested module's directory under components/
	pkg    string // the package to build
	bin    string // the binary's name
	// ldflags sets the version that the binary reports from a module
	// build (Kubernetes' own build sets it from git).
	ldflags func(version string) string
}

var components = []component{
	{module: "kubernetes", pkg: "k8s.io/kubernetes/cmd/kube-apiserver", bin: "kube-apiserver", ldflags: kubeVersion},
	{module: "kubernetes", pkg: "k8s.io/kubernetes/cmd/kube-proxy", bin: "kube-proxy", ldflags: kubeVersion},
	{module: "etcd", pkg: "go.etcd.io/etcd/server/v3", bin: "etcd"},
	{module: "coredns", pkg: "github.com/coredns/coredns", bin: "coredns"},
}

// kubeVersion stamps the version Kubernetes' release build stamps.
func kubeVersion(v string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	x := func(name, value string) string {
		return fmt.Sprintf(" -X k8s.io/component-base/version.%s=%s", name, value)
	}
	return x("gitVersion", v) + x("gitMajor", major) + x("gitMinor", minor) + x("gitTreeState", "clean")
}

// ComponentsDir is where the components' modules are, relative to this
// package's directory.
const ComponentsDir = "components"

// Build builds every component from its pinned module (in dir, the
// components directory), or reuses what an earlier build left in the cache.
// The cache is keyed on each module's go.mod and go.sum and the Go version,
// so that a change of pin rebuilds it. A cold build takes minutes (all of
// Kubernetes' apiserver); log says so.
func Build(ctx context.Context, dir string, log *slog.Logger) (Components, error) {
	cache, err := cacheDir()
	if err != nil {
		return Components{}, err
	}
	c := Components{Versions: map[string]string{}}
	paths := map[string]*string{"kube-apiserver": &c.APIServer, "kube-proxy": &c.KubeProxy, "etcd": &c.Etcd, "coredns": &c.CoreDNS}
	for _, comp := range components {
		mod := filepath.Join(dir, comp.module)
		module, version, err := pinned(mod)
		if err != nil {
			return Components{}, err
		}
		c.Versions[module] = version
		key, err := moduleKey(mod)
		if err != nil {
			return Components{}, err
		}
		out := filepath.Join(cache, comp.bin+"-"+version+"-"+key)
		*paths[comp.bin] = out
		if _, err := os.Stat(out); err == nil {
			continue
		}
		if err := buildOne(ctx, mod, comp, version, out, log); err != nil {
			return Components{}, err
		}
	}
	return c, nil
}

func buildOne(ctx context.Context, mod string, comp component, version, out string, log *slog.Logger) error {
	// One build at a time, across processes: two test binaries building
	// Kubernetes at once on two cores would each take twice as long.
	unlock, err := lockFile(out + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return nil // built while this process waited
	}
	log.Info("building a cluster component from the Go module proxy (minutes when cold)", "binary", comp.bin, "version", version)
	ldflags := "-s -w"
	if comp.ldflags != nil {
		ldflags += comp.ldflags(version)
	}
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", tmp, comp.pkg)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s in %s: %w\n%s", comp.pkg, mod, err, b)
	}
	return os.Rename(tmp, out)
}

// pinned returns the module a components module requires and its version.
func pinned(mod string) (module, version string, err error) {
	f, err := os.Open(filepath.Join(mod, "go.mod"))
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "require" {
			return fields[1], fields[2], nil
		}
	}
	return "", "", fmt.Errorf("no single-line require in %s/go.mod", mod)
}

// moduleKey hashes a module's go.mod and go.sum and the Go toolchain.
func moduleKey(mod string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum"} {
		f, err := os.Open(filepath.Join(mod, name))
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	h.Write([]byte(runtime.Version()))
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// cacheDir is $NLC_COMPONENTS_CACHE, else node-local-coredns/components in
// the user's cache directory.
func cacheDir() (string, error) {
	dir := os.Getenv("NLC_COMPONENTS_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("finding a cache directory for the cluster components (set NLC_COMPONENTS_CACHE): %w", err)
		}
		dir = filepath.Join(base, "node-local-coredns", "components")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
