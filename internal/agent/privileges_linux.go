package agent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
)

// Linux capability numbers (linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
)

// checkPrivileges fails with one line saying what to do when the process
// lacks a capability that cfg needs.
func checkPrivileges(cfg config.Config) error {
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	if (cfg.SetupInterface || cfg.SetupNetfilter) && caps&(1<<capNetAdmin) == 0 {
		return fmt.Errorf("missing capability NET_ADMIN: run as root or with NET_ADMIN, or serve on existing addresses with --setup-interface=false --setup-netfilter=false")
	}
	if int(cfg.Port) < unprivilegedPortStart() && caps&(1<<capNetBindService) == 0 {
		return fmt.Errorf("missing capability NET_BIND_SERVICE for --port %d: run as root or with NET_BIND_SERVICE, or choose a port of %d or above", cfg.Port, unprivilegedPortStart())
	}
	return nil
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/self/status")
}

func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}
