package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

// upstreamAddr is the authoritative upstream every server forwards to.
const upstreamAddr = "127.0.0.1:5300"

// benchCacheCapacity lets every server hold the 110,000 names of the
// memory figure (the agent's default is 9,984 entries per cache).
const benchCacheCapacity = 150000

// benchMaxTTL is every server's cap on a cached answer's TTL, in seconds:
// the upstream's TTL, longer than the run, so that no server refreshes an
// entry while it is measured (the agent's Corefile caps at 30 s, and the
// CPU figure keeps every server running for minutes).
const benchMaxTTL = 3600

// benchCorefile is the agent's built-in Corefile template with benchMaxTTL
// as its cap.
func benchCorefile() (string, error) {
	const cap30 = "success {{ .SuccessCapacity }} 30\n"
	if !strings.Contains(corefile.Default, cap30) {
		return "", fmt.Errorf("the built-in Corefile has no %q to raise to %d s", strings.TrimSpace(cap30), benchMaxTTL)
	}
	return strings.ReplaceAll(corefile.Default, cap30, fmt.Sprintf("success {{ .SuccessCapacity }} %d\n", benchMaxTTL)), nil
}

// spreadBlock is a spread block of the built-in Corefile, whose
// max_concurrent spreadToForward keeps.
var spreadBlock = regexp.MustCompile(`(?s)spread \. (\S+) \{[^}]*?max_concurrent (\d+)\s*\}`)

// spreadToForward puts CoreDNS's forward, as the built-in Corefile had it
// before spread (over TCP, the same timeout and cap), in the place of each
// spread block, which stock CoreDNS does not have. With one upstream
// address and no endpoints, spread sends every miss to it over TCP as
// forward does.
func spreadToForward(text string) (string, error) {
	if !spreadBlock.MatchString(text) {
		return "", fmt.Errorf("the built-in Corefile has no spread block to replace with forward")
	}
	return spreadBlock.ReplaceAllString(text, "forward . $1 {\n        force_tcp\n        read_timeout 900ms\n        max_connect_attempts 2\n        max_concurrent $2\n    }"), nil
}

// agentName is node-local-coredns's name among the servers, always the
// first: the ratios are its figures over the others'.
const agentName = "node-local-coredns"

// server is one DNS server under test.
type server struct {
	name string
	port int
	// command returns the command that runs it in the foreground.
	command func(dir string) (*exec.Cmd, error)
	cmd     *exec.Cmd
}

func servers(bin string) []*server {
	return []*server{
		{name: agentName, port: 5301, command: func(dir string) (*exec.Cmd, error) {
			tmpl, err := benchCorefile()
			if err != nil {
				return nil, err
			}
			path := filepath.Join(dir, "Corefile.tmpl")
			if err := os.WriteFile(path, []byte(tmpl), 0o644); err != nil {
				return nil, err
			}
			return exec.Command(filepath.Join(bin, "node-local-coredns"), "--corefile="+path, "--local-ip=127.0.0.1", "--port=5301",
				"--upstream="+upstreamAddr, "--setup-interface=false", "--setup-netfilter=false",
				"--health-addr=127.0.0.1:15301", "--ready-addr=127.0.0.1:16301", "--metrics-addr=127.0.0.1:17301",
				"--cache-success="+strconv.Itoa(benchCacheCapacity), "--cache-denial="+strconv.Itoa(benchCacheCapacity),
				// dnsperf is one client: the per-client limit would drop the
				// misses it measures (stock CoreDNS has no such limit).
				"--miss-rate=0"), nil
		}},
		{name: "coredns", port: 5302, command: func(dir string) (*exec.Cmd, error) {
			// The agent's own built-in Corefile, rendered for this port: the
			// same plugins doing the same work, with CoreDNS's cache in the
			// place of fastcache (which takes the same options).
			tmpl, err := benchCorefile()
			if err != nil {
				return nil, err
			}
			text, err := corefile.Render("built-in", tmpl, corefile.Values{
				LocalIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort(upstreamAddr)},
				ClusterDomain: "cluster.local", Port: 5302, HealthAddr: "127.0.0.1:15302", ReadyAddr: "127.0.0.1:16302",
				MetricsAddr: "127.0.0.1:17302", ReloadInterval: 5 * time.Second, ServeStale: time.Hour,
				MaxUDPSize: config.DefaultMaxUDPSize, SuccessCapacity: benchCacheCapacity, DenialCapacity: benchCacheCapacity,
			})
			if err != nil {
				return nil, err
			}
			text = strings.ReplaceAll(text, "    fastcache {", "    cache {")
			if text, err = spreadToForward(text); err != nil {
				return nil, err
			}
			path := filepath.Join(dir, "Corefile")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				return nil, err
			}
			return exec.Command(filepath.Join(bin, "coredns-stock"), "-conf", path, "-quiet"), nil
		}},
		{name: "unbound", port: 5303, command: func(dir string) (*exec.Cmd, error) {
			// Room for the memory figure's names, and the other servers' TTL
			// caps.
			return unbound(dir, 5303, upstreamAddr, fmt.Sprintf(`  msg-cache-size: 64m
  rrset-cache-size: 128m
  cache-max-ttl: %d
  cache-max-negative-ttl: 5
  so-reuseport: no
`, benchMaxTTL))
		}},
		{name: "dnsmasq", port: 5304, command: func(string) (*exec.Cmd, error) {
			return exec.Command("dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=5304", "--listen-address=127.0.0.1",
				"--bind-interfaces", "--server=127.0.0.1#5300", "--cache-size=150000", "--max-cache-ttl="+strconv.Itoa(benchMaxTTL), "--user=root", "--pid-file=",
				"--log-facility=-"), nil
		}},
	}
}

// unbound returns the command that runs Unbound in the foreground on port
// of 127.0.0.1, one thread, without its validator (no trust anchor on a
// node cache), forwarding every name to upstream (host:port); extra are
// more server: options, each line indented by two spaces.
func unbound(dir string, port int, upstream, extra string) (*exec.Cmd, error) {
	conf := fmt.Sprintf(`server:
  interface: 127.0.0.1@%d
  port: %d
  do-daemonize: no
  num-threads: 1
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
%sforward-zone:
  name: "."
  forward-addr: %s
`, port, port, dir, extra, strings.Replace(upstream, ":", "@", 1))
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return exec.Command("unbound", "-d", "-c", path), nil
}

// start runs the server pinned to CPU 0 (with GOMAXPROCS=gomaxprocs for Go
// servers) and waits until it answers.
func (s *server) start(ctx context.Context, dir string, gomaxprocs int) error {
	cmd, err := s.command(dir)
	if err != nil {
		return err
	}
	pinned := exec.CommandContext(ctx, "taskset", append([]string{"-c", "0", cmd.Path}, cmd.Args[1:]...)...)
	pinned.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(gomaxprocs))
	pinned.Stdout, pinned.Stderr = os.Stderr, os.Stderr
	if err := pinned.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.name, err)
	}
	s.cmd = pinned
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("ready.bench.example.org.", dns.TypeA)
	for range 100 {
		if _, _, err := c.Exchange(m, "127.0.0.1:"+strconv.Itoa(s.port)); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	return fmt.Errorf("%s does not answer on port %d", s.name, s.port)
}

func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// cpu returns the CPU time the server's process has used (all threads).
func (s *server) cpu() time.Duration {
	pid := s.cmd.Process.Pid
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return time.Duration(total)
}

// rss returns the server's resident memory in bytes.
func (s *server) rss() float64 { return s.status("VmRSS") }

// rssAnon returns the part of its resident memory that is its own
// (anonymous: heap, stacks), not pages of its executable and libraries.
func (s *server) rssAnon() float64 { return s.status("RssAnon") }

// status returns a field of the server's /proc status in bytes (0 if it
// cannot be read).
func (s *server) status(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb * 1024
		}
	}
	return 0
}
