package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryShare is the part of the container's memory limit given to Go's
// heap as its soft limit (GOMEMLIMIT): the collector works harder as the
// heap nears it, instead of letting garbage grow the process into the
// kernel's OOM kill; the rest is for stacks, the runtime and the kernel's
// socket buffers charged to the container.
const memoryShare = 0.85

// setMemoryLimit sets Go's soft memory limit from the container's limit:
// limit bytes (the flag, from the downward API), else the cgroup's own
// limit. GOMEMLIMIT, when set, wins, as Go's documentation has it. It
// returns the container's limit (0: unknown), which sizes the caches.
func setMemoryLimit(limit int64, log *slog.Logger) int64 {
	from := "--memory-limit"
	if limit <= 0 {
		limit, from = cgroupMemoryLimit(), "cgroup"
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		log.Info("memory limit", "container", limit, "gomemlimit", os.Getenv("GOMEMLIMIT"), "from", "GOMEMLIMIT")
		return limit
	}
	if limit <= 0 {
		log.Info("memory limit", "gomemlimit", "none", "because", "no --memory-limit and no cgroup limit found")
		return 0
	}
	soft := int64(float64(limit) * memoryShare)
	debug.SetMemoryLimit(soft)
	log.Info("memory limit", "container", limit, "gomemlimit", soft, "from", from)
	return limit
}

// cgroupMemoryLimit reads the limit of the process's own memory cgroup as a
// container sees it (cgroup v2 memory.max, or v1 memory.limit_in_bytes), 0
// when there is none.
func cgroupMemoryLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		return parseCgroupLimit(string(b))
	}
	return 0
}

// parseCgroupLimit parses a cgroup memory limit: "max" (v2) and v1's
// page-rounded maximum mean none.
func parseCgroupLimit(s string) int64 {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0
	}
	return n
}
