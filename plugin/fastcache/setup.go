package fastcache

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/bufsize"
	clog "github.com/coredns/coredns/plugin/pkg/log"
)

const pluginName = "fastcache"

var log = clog.NewWithPlugin(pluginName)

var registerOnce sync.Once

// Register adds fastcache to CoreDNS's plugins, in the place of cache in the
// plugin order. CoreDNS's cache plugin must be compiled in: fastcache uses
// it for everything but the fast path. Register is idempotent.
func Register() {
	registerOnce.Do(func() {
		plugin.Register(pluginName, setup)
		plugin.Register(missLimitName, setupMissLimit)
		if slices.Contains(dnsserver.Directives, pluginName) {
			return
		}
		i := slices.Index(dnsserver.Directives, "cache")
		if i < 0 {
			i = len(dnsserver.Directives)
		}
		dnsserver.Directives = slices.Insert(dnsserver.Directives, i, missLimitName, pluginName)
	})
}

// options are the cache options the fast path has to honour; CoreDNS's
// cache parses and validates them all.
type options struct {
	keepTTL    bool
	prefetch   int
	percentage int
	staleTTL   uint32
	// serve_stale: how long after expiry an entry is served, whether it
	// is refreshed before (verify, within verifyTimeout; 0 waits for the
	// upstream) or after it is served, and how long a failed refresh is
	// not retried (0: every query retries).
	staleUpTo, verifyTimeout, staleRecheck time.Duration
	verify                                 bool
	// The cache's capacities for answers and denials.
	successCap, denialCap int
	// retention bounds how long CoreDNS's cache keeps an entry: the larger
	// of its two maximum TTLs, and the serve_stale duration after that.
	retention time.Duration
	// The cache's bounds on the TTL of what it stores, its maximum and
	// minimum for answers (success) and denials.
	successTTL, minSuccessTTL, denialTTL, minDenialTTL time.Duration
	// storeMisses is set when every option of the block is one hitAnswer
	// follows (success, denial, serve_stale, servfail): the fast path then
	// stores an answer when the cache stores it, at the miss, not at the
	// first hit.
	storeMisses bool
}

func setup(c *caddy.Controller) error {
	cfg := dnsserver.GetConfig(c)
	tokens := c.Dispenser // a copy, read after cache has validated the block
	action, err := caddy.DirectiveAction("dns", "cache")
	if err != nil {
		return plugin.Error(pluginName, fmt.Errorf("the cache plugin is not compiled in: %w", err))
	}
	n := len(cfg.Plugin)
	if err := action(c); err != nil {
		return plugin.Error(pluginName, err)
	}
	if len(cfg.Plugin) != n+1 {
		return plugin.Error(pluginName, errors.New("the cache plugin did not add itself to the chain"))
	}
	cache := cfg.Plugin[n]
	cfg.Plugin = cfg.Plugin[:n]
	opts, err := parseOptions(&tokens)
	if err != nil {
		return plugin.Error(pluginName, err)
	}

	f := &FastCache{opts: opts, zone: cfg.Zone, wire: zoneKey(cfg.Zone), view: cfg.ViewName, cfg: cfg,
		cacheZones: strings.Join(plugin.OriginsFromArgsOrServerBlock(nil, c.ServerBlockKeys), ",")}
	if opts.storeMisses {
		// The fast path's store is the cache of what it stores, with the
		// cache's two capacities.
		f.store = newStore(opts.successCap)
		f.denial = f.store.sibling(opts.denialCap)
	} else {
		f.store = newStore(opts.successCap + opts.denialCap)
	}
	largeAnswers.size()
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		f.Next = next
		f.up = upstream{next: next, f: f}
		f.cache = cache(f.up)
		return f
	})
	addrs := listenAddrs(cfg)
	c.OnStartup(func() error {
		f.m = newZoneMetrics(cfg, f)
		f.fast.Store(f.eligible(cfg))
		f.inline = opts.storeMisses && parksAfter(cfg)
		for _, a := range addrs {
			listeners.register(a, f)
		}
		return nil
	})
	c.OnShutdown(func() error {
		for _, a := range addrs {
			listeners.unregister(a, f)
		}
		return nil
	})
	cfg.UDPDecorateWriterFunc = attach
	return nil
}

// listenAddrs are the host:port addresses the server block listens on.
func listenAddrs(cfg *dnsserver.Config) []string {
	if cfg.Transport != "dns" {
		return nil
	}
	hosts := cfg.ListenHosts
	if len(hosts) == 0 {
		hosts = []string{""}
	}
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, "dns://"+joinHostPort(h, cfg.Port))
	}
	return out
}

func joinHostPort(h, p string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]:" + p
	}
	return h + ":" + p
}

// fastBefore are the plugins that may run before fastcache without turning
// the fast path off: on a cache hit, errors does nothing, the fast path
// counts what prometheus counts, it caps the client's buffer size as
// bufsize does (eligible reads the cap), and its reader applies misslimit's
// limit to what it leaves to the chain.
var fastBefore = map[string]bool{"errors": true, "prometheus": true, "bufsize": true, missLimitName: true}

// eligible reports whether a hit answered by the fast path is what the
// plugin chain would answer: only plugins of fastBefore run before this one.
// It records bufsize's cap.
func (f *FastCache) eligible(cfg *dnsserver.Config) bool {
	if f.opts.keepTTL {
		log.Infof("zone %s: fast path off: keepttl keeps the TTL the fast path would age", f.zone)
		return false
	}
	me := slices.Index(dnsserver.Directives, pluginName)
	for _, h := range cfg.Handlers() {
		i := slices.Index(dnsserver.Directives, h.Name())
		if i < 0 || i >= me {
			continue
		}
		switch b := h.(type) {
		case bufsize.Bufsize:
			f.maxUDP = b.Size
		case *bufsize.Bufsize:
			f.maxUDP = b.Size
		case *MissLimit:
			f.limit = b.l
		}
		if fastBefore[h.Name()] {
			continue
		}
		log.Infof("zone %s: fast path off: plugin %s runs before fastcache on every query", f.zone, h.Name())
		return false
	}
	return true
}

// inlineAfter are the plugins that may run after fastcache for a miss to
// go on in the fast path's reader (package coro): loop passes the query
// on, and spread parks it while it waits for the upstream; any other may
// wait in the reader.
var inlineAfter = map[string]bool{"loop": true, "spread": true}

// parksAfter reports whether only plugins of inlineAfter run after
// fastcache.
func parksAfter(cfg *dnsserver.Config) bool {
	me := slices.Index(dnsserver.Directives, pluginName)
	for _, h := range cfg.Handlers() {
		if i := slices.Index(dnsserver.Directives, h.Name()); i > me && !inlineAfter[h.Name()] {
			return false
		}
	}
	return true
}

// parseOptions reads what the fast path needs from a fastcache block that
// CoreDNS's cache has already validated.
func parseOptions(d *caddyfile.Dispenser) (options, error) {
	o := options{percentage: 10, storeMisses: true}
	success, denial := defaultCap, defaultCap
	successTTL, denialTTL := defaultSuccessTTL, defaultDenialTTL
	minSuccessTTL, minDenialTTL := defaultMinTTL, defaultMinTTL
	var stale time.Duration
	for d.Next() {
		if args := d.RemainingArgs(); len(args) > 0 {
			// cache [TTL] [ZONES...]: the maximum TTL of both.
			n, err := strconv.Atoi(args[0])
			if err == nil {
				successTTL, denialTTL = n, n
			}
			if err != nil || len(args) > 1 {
				// Zones of its own: the cache leaves the others to the
				// chain uncached.
				o.storeMisses = false
			}
		}
		for d.NextBlock() {
			// The option's name, before RemainingArgs moves past its
			// arguments.
			opt := d.Val()
			args := d.RemainingArgs()
			switch opt {
			case "success", "denial":
				if len(args) == 0 {
					continue
				}
				n, err := strconv.Atoi(args[0])
				if err != nil {
					return o, err
				}
				ttl, minTTL := 0, -1
				if len(args) > 1 {
					if ttl, err = strconv.Atoi(args[1]); err != nil {
						return o, err
					}
				}
				if len(args) > 2 {
					if minTTL, err = strconv.Atoi(args[2]); err != nil {
						return o, err
					}
				}
				if opt == "success" {
					success = n
					if ttl > 0 {
						successTTL = ttl
					}
					if minTTL >= 0 {
						minSuccessTTL = minTTL
					}
				} else {
					denial = n
					if ttl > 0 {
						denialTTL = ttl
					}
					if minTTL >= 0 {
						minDenialTTL = minTTL
					}
				}
			case "servfail", "serve_stale":
				// SERVFAIL, which hitAnswer leaves to the cache; expired
				// entries, which the fast path leaves to it.
			default:
				o.storeMisses = false
			}
			switch opt {
			case "keepttl":
				o.keepTTL = true
			case "prefetch":
				// The cache counts hits to prefetch: they must reach it.
				o.prefetch = 1
				if len(args) > 0 {
					n, err := strconv.Atoi(args[0])
					if err != nil {
						return o, err
					}
					o.prefetch = n
				}
				for _, a := range args[1:] {
					if p, ok := strings.CutSuffix(a, "%"); ok {
						n, err := strconv.Atoi(p)
						if err != nil {
							return o, err
						}
						o.percentage = n
					}
				}
			case "serve_stale":
				// serve_stale [DURATION] [immediate [STALE_TTL ...] | verify [TIMEOUT [STALE_TTL ...]]]
				stale = time.Hour
				if len(args) > 0 {
					d, err := time.ParseDuration(args[0])
					if err != nil {
						return o, err
					}
					stale = d
				}
				o.staleUpTo = stale
				at := 2
				if len(args) > 1 && strings.EqualFold(args[1], "verify") {
					o.verify = true
					at = 3
					if len(args) > 2 {
						d, err := time.ParseDuration(args[2])
						if err != nil {
							return o, err
						}
						o.verifyTimeout = d
					}
				}
				if len(args) > at {
					d, err := time.ParseDuration(args[at])
					if err != nil {
						return o, err
					}
					o.staleTTL = uint32(d / time.Second)
				}
				if len(args) > at+1 {
					d, err := time.ParseDuration(args[at+1])
					if err != nil {
						return o, err
					}
					o.staleRecheck = d
				}
			}
		}
	}
	o.successCap, o.denialCap = success, denial
	o.successTTL, o.minSuccessTTL = time.Duration(successTTL)*time.Second, time.Duration(minSuccessTTL)*time.Second
	o.denialTTL, o.minDenialTTL = time.Duration(denialTTL)*time.Second, time.Duration(minDenialTTL)*time.Second
	o.retention = time.Duration(max(successTTL, denialTTL))*time.Second + stale
	return o, nil
}

// defaultCap is CoreDNS's cache's default capacity for each of its two
// caches.
const defaultCap = 9984

// CoreDNS's cache's default maximum TTLs, in seconds.
const (
	defaultSuccessTTL = 3600
	defaultDenialTTL  = 1800
	defaultMinTTL     = 5
)
