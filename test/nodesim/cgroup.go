package nodesim

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MemoryCgroup is a child memory cgroup of this process's own, with a
// limit, for running a process of the test at a container's memory limit
// (cgroup v1 memory.limit_in_bytes, or v2 memory.max).
type MemoryCgroup struct {
	Path string
	v2   bool
}

// NewMemoryCgroup creates a child cgroup of this process's memory cgroup
// limited to limit bytes (no swap beyond it, as kubelet sets it).
func NewMemoryCgroup(limit int64) (*MemoryCgroup, error) {
	base, v2, err := ownMemoryCgroup()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	cg := &MemoryCgroup{Path: filepath.Join(base, fmt.Sprintf("nlc-%d-%s", os.Getpid(), hex.EncodeToString(b))), v2: v2}
	if err := os.Mkdir(cg.Path, 0o755); err != nil {
		return nil, fmt.Errorf("creating cgroup %s: %w", cg.Path, err)
	}
	files := [][2]string{{"memory.limit_in_bytes", strconv.FormatInt(limit, 10)}}
	if v2 {
		files = [][2]string{{"memory.max", strconv.FormatInt(limit, 10)}, {"memory.swap.max", "0"}}
	} else if _, err := os.Stat(filepath.Join(cg.Path, "memory.memsw.limit_in_bytes")); err == nil {
		files = append(files, [2]string{"memory.memsw.limit_in_bytes", strconv.FormatInt(limit, 10)})
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(cg.Path, f[0]), []byte(f[1]), 0o644); err != nil {
			_ = os.Remove(cg.Path)
			return nil, fmt.Errorf("setting %s in %s: %w", f[0], cg.Path, err)
		}
	}
	return cg, nil
}

// ownMemoryCgroup finds this process's memory cgroup directory.
func ownMemoryCgroup() (string, bool, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	var v1, unified string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			unified = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1 = parts[2]
			}
		}
	}
	if v1 != "" {
		if dir := filepath.Join("/sys/fs/cgroup/memory", v1); exists(dir) {
			return dir, false, nil
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(b), "memory") {
		return filepath.Join("/sys/fs/cgroup", unified), true, nil
	}
	return "", false, errors.New("no memory cgroup controller found (cgroup v1 memory or v2 with memory enabled)")
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Add moves process pid into the cgroup.
func (cg *MemoryCgroup) Add(pid int) error {
	return os.WriteFile(filepath.Join(cg.Path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// OOMKills returns how many processes the kernel killed for the limit.
func (cg *MemoryCgroup) OOMKills() (int, error) {
	b, err := cg.read("memory.oom_control", "memory.events")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(b, "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("no oom_kill count in the cgroup's memory events")
}

// Peak returns the most memory the cgroup has used, in bytes.
func (cg *MemoryCgroup) Peak() (int64, error) {
	b, err := cg.read("memory.max_usage_in_bytes", "memory.peak")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(b), 10, 64)
}

// read reads the cgroup's file v1 or, on cgroup v2, v2.
func (cg *MemoryCgroup) read(v1, v2 string) (string, error) {
	name := v1
	if cg.v2 {
		name = v2
	}
	b, err := os.ReadFile(filepath.Join(cg.Path, name))
	return string(b), err
}

// Close removes the cgroup; its processes must have exited.
func (cg *MemoryCgroup) Close() error {
	if err := os.Remove(cg.Path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing cgroup %s: %w", cg.Path, err)
	}
	return nil
}
