// Package config resolves the agent's typed configuration from flags and the
// service environment variables that kubelet injects into every pod.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults, kept in one place.
const (
	DefaultUpstreamService = "node-local-coredns"
	DefaultInterface       = "nodelocaldns"
	DefaultClusterDomain   = "cluster.local"
	DefaultPort            = 53
	DefaultSyncInterval    = 10 * time.Second
	DefaultHealthAddr      = "127.0.0.1:8080"
	DefaultReadyAddr       = "127.0.0.1:8181"
	DefaultMetricsAddr     = ":9253"
	DefaultReloadInterval  = 5 * time.Second
	DefaultServeStale      = time.Hour
	DefaultCacheCapacity   = 9984
	// DefaultMaxConcurrent is forward's max_concurrent when the memory
	// limit is unknown.
	DefaultMaxConcurrent = 1000
	// DefaultMaxUDPSize caps UDP answers whatever buffer a client
	// advertises (DNS Flag Day 2020; Unbound's and Knot Resolver's
	// default): larger answers are truncated (TC), and the client asks
	// again over TCP.
	DefaultMaxUDPSize = 1232
	// minMaxUDPSize is the smallest cap: the fast path answers up to
	// 1,220 bytes itself, within any cap at or above it.
	minMaxUDPSize = 1232
	maxMaxUDPSize = 4096
	// DefaultMissRate is how many queries a second one client may send
	// past the cache (misses), with bursts of twice as many: a pod's
	// lookups of new external names walk the search path (eight queries
	// each with ndots:5), so this is some 60 new names a second per pod.
	DefaultMissRate = 500
	// DefaultProbeMark is the firewall mark on the watchdog's probes. It
	// avoids the bits kube-proxy (0x4000, 0x8000) and Calico (0xffff0000)
	// use.
	DefaultProbeMark = 0x00200000

	// kubeDNSHostEnv holds the kube-dns ClusterIP in every pod.
	kubeDNSHostEnv = "KUBE_DNS_SERVICE_HOST"
	// memoryLimitEnv holds the container's memory limit, in bytes (the
	// DaemonSet sets it from limits.memory through the downward API).
	memoryLimitEnv = "MEMORY_LIMIT"
)

// Config is the resolved, validated configuration of one agent.
type Config struct {
	// LocalIPs are the addresses the agent takes over and serves on,
	// normally the kube-dns ClusterIP (one per address family).
	LocalIPs []netip.Addr
	// Upstreams receive every cache miss, normally the ClusterIP of the
	// node-local-coredns Service, which has the same endpoints as kube-dns.
	Upstreams []netip.AddrPort
	// UpstreamService names the Service whose environment variables give
	// Upstreams when --upstream is not set.
	UpstreamService string
	// UpstreamEndpoints is the name of the headless Service whose records
	// are kube-dns's endpoints, over which misses are spread (spread
	// plugin); empty: misses go to Upstreams only.
	UpstreamEndpoints string
	// Interface holds the local IPs; created (and later deleted) when absent.
	Interface string
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain string
	// Port is the DNS port served on every local IP.
	Port uint16
	// CorefilePath is a Corefile template file; empty means the built-in one.
	CorefilePath string
	// SyncInterval is how often addresses and rules are checked and repaired.
	SyncInterval time.Duration
	// ReloadInterval is how often the Corefile template is checked for changes.
	ReloadInterval time.Duration
	// SuccessCapacity and DenialCapacity size the built-in Corefile's caches
	// (0: from the memory limit, see Sized).
	SuccessCapacity, DenialCapacity int
	// MaxConcurrent bounds the misses each forward of the built-in Corefile
	// has in flight (Sized sets it from the memory limit).
	MaxConcurrent int
	// ServeStale is how long expired cache entries are served while
	// kube-dns does not answer (RFC 8767).
	ServeStale time.Duration
	// MaxUDPSize caps UDP answers, in bytes.
	MaxUDPSize int
	// MissRate is how many queries a second one client address may send
	// past the cache; 0: no limit.
	MissRate int
	// MemoryLimit is the container's memory limit in bytes (0: unknown;
	// the agent then reads its cgroup's).
	MemoryLimit int64
	// SetupInterface adds the local IPs to Interface (and creates it).
	SetupInterface bool
	// SetupNetfilter installs the NOTRACK/ACCEPT rules.
	SetupNetfilter bool
	// DivertHostNetwork also takes host-network clients off conntrack and
	// DNAT (raw OUTPUT). It is not gated on a bound socket; see docs.
	DivertHostNetwork bool
	// ProbeMark is the firewall mark of the watchdog's probes (0: none).
	ProbeMark uint32
	// Netfilter is the rules backend: auto, nftables, iptables-nft or
	// iptables-legacy.
	Netfilter string
	// HealthAddr is where the CoreDNS health plugin listens.
	HealthAddr string
	// ReadyAddr is where the CoreDNS ready plugin listens.
	ReadyAddr string
	// MetricsAddr is where Prometheus metrics are served.
	MetricsAddr string
}

// Error is a configuration error that names the flag (and the environment
// variable, where one applies) the user has to set.
type Error struct {
	Flag string
	Env  string
	Err  error
}

func (e *Error) Error() string {
	if e.Env != "" {
		return fmt.Sprintf("--%s: %v (set --%s or $%s)", e.Flag, e.Err, e.Flag, e.Env)
	}
	return fmt.Sprintf("--%s: %v", e.Flag, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrHelp is returned by Parse when -h or --help was given.
var ErrHelp = flag.ErrHelp

// Parse resolves the configuration from args (without the program name) and
// getenv. It returns an *Error naming the flag for any missing or bad value;
// it touches nothing on the node.
func Parse(args []string, getenv func(string) string, output io.Writer) (Config, error) {
	fs := flag.NewFlagSet("node-local-coredns", flag.ContinueOnError)
	var (
		common      = addShared(fs, "comma-separated IPs to take over and serve on", "firewall mark of the watchdog's probes, let through to the agent even while fenced off (0: none)")
		upstreamSvc = fs.String("upstream-svc", DefaultUpstreamService, "Service that receives cache misses, found through $<NAME>_SERVICE_HOST and $<NAME>_SERVICE_PORT_DNS")
		upstreams   = fs.String("upstream", "", "comma-separated host[:port] upstreams; overrides --upstream-svc")
		endpoints   = fs.String("upstream-endpoints", "auto", "DNS name of the headless Service whose A/AAAA records are kube-dns's endpoints; misses are spread over them, and the upstream Service is the path while none is known (auto: <upstream-svc>-endpoints.kube-system.svc.<cluster-domain>, unless --upstream is set; none: the Service only)")
		c           Config
	)
	fs.StringVar(&c.Interface, "interface", DefaultInterface, "interface that holds the local IPs; created as a dummy (or port-less bridge) when absent")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", DefaultClusterDomain, "cluster DNS domain")
	fs.StringVar(&c.CorefilePath, "corefile", "", "Corefile template file (default: built in)")
	fs.DurationVar(&c.SyncInterval, "sync-interval", DefaultSyncInterval, "how often addresses and rules are checked and repaired")
	fs.DurationVar(&c.ReloadInterval, "reload-interval", DefaultReloadInterval, "how often the Corefile template is checked for changes (rendered into the reload plugin)")
	fs.IntVar(&c.SuccessCapacity, "cache-success", 0, "capacity of each cache for answers (entries; default: from the memory limit, see docs/configuration.md)")
	fs.IntVar(&c.DenialCapacity, "cache-denial", 0, "capacity of each cache for denials, NXDOMAIN and NODATA (entries; default: from the memory limit)")
	fs.DurationVar(&c.ServeStale, "serve-stale", DefaultServeStale, "how long expired cache entries are served while kube-dns does not answer (0: never)")
	fs.Int64Var(&c.MemoryLimit, "memory-limit", 0, "the container's memory limit in bytes, of which 85% becomes Go's soft limit (default $MEMORY_LIMIT, as the DaemonSet sets it from limits.memory, else the cgroup's limit)")
	fs.IntVar(&c.MissRate, "miss-rate", DefaultMissRate, "queries a second one client may send past the cache (cache misses), bursts of twice as many; more are dropped (0: no limit)")
	fs.IntVar(&c.MaxUDPSize, "max-udp-size", DefaultMaxUDPSize, fmt.Sprintf("largest UDP answer in bytes, whatever the client advertises (%d to %d); larger ones are truncated for the client to retry over TCP", minMaxUDPSize, maxMaxUDPSize))
	fs.BoolVar(&c.SetupInterface, "setup-interface", true, "add the local IPs to --interface")
	fs.BoolVar(&c.SetupNetfilter, "setup-netfilter", true, "install the NOTRACK and ACCEPT rules")
	fs.BoolVar(&c.DivertHostNetwork, "divert-host-network", false, "also take host-network clients off conntrack (not gated on a bound socket)")
	fs.StringVar(&c.HealthAddr, "health-addr", DefaultHealthAddr, "address of the health endpoint")
	fs.StringVar(&c.ReadyAddr, "ready-addr", DefaultReadyAddr, "address of the readiness endpoint")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", DefaultMetricsAddr, "address of the Prometheus metrics endpoint")
	if err := parse(fs, args, output, "Usage: node-local-coredns [flags]\n       node-local-coredns watchdog|status [flags]\n       node-local-coredns --version | --plugins"); err != nil {
		return Config{}, err
	}
	var err error
	if c.LocalIPs, c.Port, c.ProbeMark, c.Netfilter, err = common.resolve(getenv); err != nil {
		return Config{}, err
	}
	c.UpstreamService = *upstreamSvc
	if c.Upstreams, err = resolveUpstreams(*upstreams, *upstreamSvc, getenv); err != nil {
		return Config{}, err
	}
	switch *endpoints {
	case "auto":
		if *upstreams == "" {
			c.UpstreamEndpoints = *upstreamSvc + "-endpoints.kube-system.svc." + strings.TrimSuffix(c.ClusterDomain, ".")
		}
	case "none", "":
	default:
		c.UpstreamEndpoints = strings.TrimSuffix(*endpoints, ".")
	}
	if c.MemoryLimit == 0 {
		if v := getenv(memoryLimitEnv); v != "" {
			if c.MemoryLimit, err = strconv.ParseInt(v, 10, 64); err != nil || c.MemoryLimit < 0 {
				return Config{}, &Error{Flag: "memory-limit", Env: memoryLimitEnv, Err: fmt.Errorf("%q is not a number of bytes", v)}
			}
		}
	}
	if c.MemoryLimit < 0 {
		return Config{}, &Error{Flag: "memory-limit", Err: fmt.Errorf("%d is negative", c.MemoryLimit)}
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Watchdog is the configuration of the watchdog command.
type Watchdog struct {
	// LocalIPs and Port are the agent's listen addresses.
	LocalIPs []netip.Addr
	Port     uint16
	// Interval between probes, Timeout of one probe, and Silence, how long
	// the agent may not answer before the node is taken off it.
	Interval, Timeout, Silence time.Duration
	// ProbeMark is the firewall mark on probes (must match the agent's).
	ProbeMark uint32
	// Netfilter is the rules backend: auto, nftables, iptables-nft or
	// iptables-legacy.
	Netfilter string
	// MetricsAddr is where the watchdog serves its metrics ("" for none).
	MetricsAddr string
}

// ParseWatchdog resolves the watchdog's configuration.
func ParseWatchdog(args []string, getenv func(string) string, output io.Writer) (Watchdog, error) {
	fs := flag.NewFlagSet("node-local-coredns watchdog", flag.ContinueOnError)
	var (
		common = addShared(fs, "comma-separated IPs the agent serves", "firewall mark of the probes; the same as the agent's --probe-mark")
		w      Watchdog
	)
	fs.DurationVar(&w.Interval, "probe-interval", 250*time.Millisecond, "time between probes")
	fs.DurationVar(&w.Timeout, "probe-timeout", 250*time.Millisecond, "how long one probe waits for its answer")
	fs.DurationVar(&w.Silence, "silence", time.Second, "how long the agent may not answer before the node is taken off it")
	fs.StringVar(&w.MetricsAddr, "metrics-addr", ":9254", "address of the watchdog's Prometheus metrics (empty: none)")
	if err := parse(fs, args, output, "Usage: node-local-coredns watchdog [flags]"); err != nil {
		return Watchdog{}, err
	}
	var err error
	if w.LocalIPs, w.Port, w.ProbeMark, w.Netfilter, err = common.resolve(getenv); err != nil {
		return Watchdog{}, err
	}
	if w.ProbeMark == 0 {
		return Watchdog{}, &Error{Flag: "probe-mark", Err: errors.New("the watchdog needs a mark other than 0")}
	}
	if w.Interval < 10*time.Millisecond || w.Timeout <= 0 || w.Silence < w.Interval {
		return Watchdog{}, &Error{Flag: "silence", Err: fmt.Errorf("need --probe-interval >= 10ms, --probe-timeout > 0 and --silence >= --probe-interval")}
	}
	return w, nil
}

// Status is the configuration of the status command.
type Status struct {
	LocalIPs  []netip.Addr
	Port      uint16
	Upstreams []netip.AddrPort
	// ProbeMark must match the agent's --probe-mark.
	ProbeMark uint32
	// DivertHostNetwork must match the agent's flag (it changes the rules).
	DivertHostNetwork bool
	Netfilter         string
	// MetricsAddr is the agent's metrics endpoint, for cache figures.
	MetricsAddr string
	Timeout     time.Duration
}

// ParseStatus resolves the status command's configuration; its defaults
// are the agent's, from the same environment.
func ParseStatus(args []string, getenv func(string) string, output io.Writer) (Status, error) {
	fs := flag.NewFlagSet("node-local-coredns status", flag.ContinueOnError)
	var (
		common      = addShared(fs, "comma-separated IPs the agent serves", "the agent's --probe-mark")
		upstreamSvc = fs.String("upstream-svc", DefaultUpstreamService, "Service that receives cache misses")
		upstreams   = fs.String("upstream", "", "comma-separated host[:port] upstreams; overrides --upstream-svc")
		s           Status
	)
	fs.BoolVar(&s.DivertHostNetwork, "divert-host-network", false, "the agent's --divert-host-network")
	fs.StringVar(&s.MetricsAddr, "metrics-addr", DefaultMetricsAddr, "the agent's --metrics-addr")
	fs.DurationVar(&s.Timeout, "timeout", time.Second, "how long each probe waits")
	if err := parse(fs, args, output, "Usage: node-local-coredns status [flags]\n\nReports whether this node's DNS is served by the agent; exit code 0 only if it is."); err != nil {
		return Status{}, err
	}
	var err error
	if s.LocalIPs, s.Port, s.ProbeMark, s.Netfilter, err = common.resolve(getenv); err != nil {
		return Status{}, err
	}
	if s.Upstreams, err = resolveUpstreams(*upstreams, *upstreamSvc, getenv); err != nil {
		return Status{}, err
	}
	return s, nil
}

// shared holds the flags every command has: where the agent serves and the
// mark and backend of its rules.
type shared struct {
	localIPs, netfilter, mode *string
	port, mark                *uint
	fs                        *flag.FlagSet
}

// Netfilter backends (--netfilter), and what the deprecated
// --iptables-mode's values mean in them.
var (
	netfilterBackends = []string{"auto", "nftables", "iptables-nft", "iptables-legacy"}
	iptablesModes     = map[string]string{"auto": "auto", "legacy": "iptables-legacy", "nft": "iptables-nft"}
)

func addShared(fs *flag.FlagSet, localIPHelp, markHelp string) *shared {
	return &shared{
		fs:        fs,
		localIPs:  fs.String("local-ip", "", localIPHelp+" (default: $"+kubeDNSHostEnv+")"),
		port:      fs.Uint("port", DefaultPort, "DNS port served on every local IP"),
		mark:      fs.Uint("probe-mark", DefaultProbeMark, markHelp),
		netfilter: fs.String("netfilter", "auto", "rules backend: auto (iptables-legacy where the host's rules are there, else the agent's own nftables table), nftables, iptables-nft or iptables-legacy"),
		mode:      fs.String("iptables-mode", "", "deprecated: use --netfilter (legacy is iptables-legacy, nft is iptables-nft, auto is auto)"),
	}
}

// resolve checks the shared flags and finds the local IPs.
func (s *shared) resolve(getenv func(string) string) (ips []netip.Addr, port uint16, mark uint32, backend string, err error) {
	if ips, err = resolveLocalIPs(*s.localIPs, getenv); err != nil {
		return nil, 0, 0, "", err
	}
	if *s.port == 0 || *s.port > 65535 {
		return nil, 0, 0, "", &Error{Flag: "port", Err: fmt.Errorf("%d is not a port", *s.port)}
	}
	if *s.mark > 0xffffffff {
		return nil, 0, 0, "", &Error{Flag: "probe-mark", Err: fmt.Errorf("%#x is wider than 32 bits", *s.mark)}
	}
	backend = *s.netfilter
	if !slices.Contains(netfilterBackends, backend) {
		return nil, 0, 0, "", &Error{Flag: "netfilter", Err: fmt.Errorf("%q is not auto, nftables, iptables-nft or iptables-legacy", backend)}
	}
	if *s.mode != "" {
		mapped, ok := iptablesModes[*s.mode]
		if !ok {
			return nil, 0, 0, "", &Error{Flag: "iptables-mode", Err: fmt.Errorf("%q is not auto, legacy or nft (the flag is deprecated: use --netfilter)", *s.mode)}
		}
		netfilterSet := false
		s.fs.Visit(func(f *flag.Flag) { netfilterSet = netfilterSet || f.Name == "netfilter" })
		if netfilterSet && mapped != backend {
			return nil, 0, 0, "", &Error{Flag: "iptables-mode", Err: fmt.Errorf("--iptables-mode=%s contradicts --netfilter=%s (the flag is deprecated: keep --netfilter only)", *s.mode, backend)}
		}
		backend = mapped
	}
	return ips, uint16(*s.port), uint32(*s.mark), backend, nil
}

// parse parses args into fs, printing usage (headed by usage) to output
// for --help only, and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string, output io.Writer, usage string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(output)
			fmt.Fprintln(output, usage+"\n\nFlags:")
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func resolveLocalIPs(value string, getenv func(string) string) ([]netip.Addr, error) {
	env := ""
	if value == "" {
		value = getenv(kubeDNSHostEnv)
		env = kubeDNSHostEnv
		if value == "" {
			return nil, &Error{Flag: "local-ip", Env: kubeDNSHostEnv, Err: errors.New("no local IP: the kube-dns ClusterIP is not known")}
		}
	}
	var ips []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range splitList(value) {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, &Error{Flag: "local-ip", Env: env, Err: fmt.Errorf("%q is not an IP address", s)}
		}
		ip = ip.Unmap()
		if ip.IsUnspecified() || ip.IsMulticast() {
			return nil, &Error{Flag: "local-ip", Env: env, Err: fmt.Errorf("%s cannot be served on", ip)}
		}
		if seen[ip] {
			continue
		}
		seen[ip] = true
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		return nil, &Error{Flag: "local-ip", Env: env, Err: errors.New("empty list")}
	}
	return ips, nil
}

// ServiceEnvPrefix returns the prefix of the environment variables kubelet
// sets for a Service: upper case, dashes as underscores.
func ServiceEnvPrefix(service string) string {
	return strings.ToUpper(strings.ReplaceAll(service, "-", "_"))
}

func resolveUpstreams(value, service string, getenv func(string) string) ([]netip.AddrPort, error) {
	if value != "" {
		var ups []netip.AddrPort
		for _, s := range splitList(value) {
			ap, err := parseHostPort(s)
			if err != nil {
				return nil, &Error{Flag: "upstream", Err: err}
			}
			ups = append(ups, ap)
		}
		if len(ups) == 0 {
			return nil, &Error{Flag: "upstream", Err: errors.New("empty list")}
		}
		return ups, nil
	}
	if service == "" {
		return nil, &Error{Flag: "upstream-svc", Err: errors.New("empty service name; set --upstream-svc or --upstream")}
	}
	prefix := ServiceEnvPrefix(service)
	hostEnv := prefix + "_SERVICE_HOST"
	host := getenv(hostEnv)
	if host == "" {
		return nil, &Error{Flag: "upstream", Env: hostEnv, Err: fmt.Errorf("the ClusterIP of Service %q is not known", service)}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, &Error{Flag: "upstream", Env: hostEnv, Err: fmt.Errorf("%q is not an IP address", host)}
	}
	port := uint16(DefaultPort)
	for _, env := range []string{prefix + "_SERVICE_PORT_DNS", prefix + "_SERVICE_PORT"} {
		if v := getenv(env); v != "" {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil || p == 0 {
				return nil, &Error{Flag: "upstream", Env: env, Err: fmt.Errorf("%q is not a port", v)}
			}
			port = uint16(p)
			break
		}
	}
	return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), port)}, nil
}

// parseHostPort parses "IP", "IP:port", "[IPv6]:port" or a bare IPv6.
func parseHostPort(s string) (netip.AddrPort, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), DefaultPort), nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not host[:port]", s)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %q is not an IP address", s, host)
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: %q is not a port", s, portStr)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), nil
}

func (c *Config) validate() error {
	for _, up := range c.Upstreams {
		for _, ip := range c.LocalIPs {
			if up.Addr() == ip && up.Port() == c.Port {
				return &Error{Flag: "upstream", Err: fmt.Errorf("%s is a local IP: forwarding there would loop", up)}
			}
		}
	}
	if c.SetupInterface {
		if c.Interface == "" || len(c.Interface) > 15 || strings.ContainsAny(c.Interface, "/ \t") {
			return &Error{Flag: "interface", Err: fmt.Errorf("%q is not an interface name", c.Interface)}
		}
	}
	domain := strings.TrimSuffix(c.ClusterDomain, ".")
	if !isDomain(domain) {
		return &Error{Flag: "cluster-domain", Err: fmt.Errorf("%q is not a domain (labels of letters, digits and hyphens)", c.ClusterDomain)}
	}
	c.ClusterDomain = domain
	if c.UpstreamEndpoints != "" && !isDomain(c.UpstreamEndpoints) {
		return &Error{Flag: "upstream-endpoints", Err: fmt.Errorf("%q is not a domain name (or auto, or none)", c.UpstreamEndpoints)}
	}
	if !slices.Contains(netfilterBackends, c.Netfilter) {
		return &Error{Flag: "netfilter", Err: fmt.Errorf("%q is not auto, nftables, iptables-nft or iptables-legacy", c.Netfilter)}
	}
	if c.SuccessCapacity < 0 || c.DenialCapacity < 0 {
		return &Error{Flag: "cache-success", Err: fmt.Errorf("cache capacities must be positive, or 0 for the memory limit's (--cache-success %d, --cache-denial %d)", c.SuccessCapacity, c.DenialCapacity)}
	}
	if c.ServeStale < 0 || c.ServeStale%time.Second != 0 {
		return &Error{Flag: "serve-stale", Err: fmt.Errorf("%s is not a whole number of seconds, 0 or more", c.ServeStale)}
	}
	if c.MissRate < 0 {
		return &Error{Flag: "miss-rate", Err: fmt.Errorf("%d is negative", c.MissRate)}
	}
	if c.MaxUDPSize < minMaxUDPSize || c.MaxUDPSize > maxMaxUDPSize {
		return &Error{Flag: "max-udp-size", Err: fmt.Errorf("%d is not between %d and %d bytes", c.MaxUDPSize, minMaxUDPSize, maxMaxUDPSize)}
	}
	if c.SyncInterval < time.Second {
		return &Error{Flag: "sync-interval", Err: fmt.Errorf("%s is shorter than 1s", c.SyncInterval)}
	}
	if c.ReloadInterval < 2*time.Second {
		return &Error{Flag: "reload-interval", Err: fmt.Errorf("%s is shorter than 2s (the reload plugin's minimum)", c.ReloadInterval)}
	}
	for flagName, addr := range map[string]string{"health-addr": c.HealthAddr, "ready-addr": c.ReadyAddr, "metrics-addr": c.MetricsAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return &Error{Flag: flagName, Err: fmt.Errorf("%q is not host:port", addr)}
		}
	}
	return nil
}

// isDomain reports whether s is a DNS name of host-name labels: nothing
// that the Corefile's syntax gives a meaning to (spaces, newlines, braces,
// quotes) can be in it.
func isDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
