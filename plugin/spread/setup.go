package spread

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin(pluginName)

var registerPlugin sync.Once

// Register adds the plugin to CoreDNS, in forward's place in the chain.
func Register() {
	registerPlugin.Do(func() {
		plugin.Register(pluginName, setup)
		if slices.Contains(dnsserver.Directives, pluginName) {
			return
		}
		i := slices.Index(dnsserver.Directives, "forward")
		if i < 0 {
			i = len(dnsserver.Directives)
		}
		dnsserver.Directives = slices.Insert(dnsserver.Directives, i, pluginName)
	})
}

func setup(c *caddy.Controller) error {
	s, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	cfg := dnsserver.GetConfig(c)
	c.OnStartup(func() error { s.startup(serverName(cfg)); return nil })
	c.OnShutdown(func() error { s.shutdown(); return nil })
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		s.Next = next
		return s
	})
	return nil
}

// startup starts the Service's connections and the endpoints' lookup.
func (s *Spread) startup(server string) {
	s.started.Store(true)
	s.m = newServerMetrics(server)
	for _, u := range s.service {
		s.start(u)
	}
	if s.name == "" {
		close(s.done)
		return
	}
	s.m.endpoints.Set(0)
	go s.discover()
}

// shutdown stops the lookup and closes every connection.
func (s *Spread) shutdown() {
	if !s.started.Load() { // an instance that never started (a failed reload)
		return
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.known {
		stopUpstream(u)
	}
	for _, u := range s.service {
		stopUpstream(u)
	}
}

// serverName is the server label CoreDNS's metrics give the block.
func serverName(cfg *dnsserver.Config) string {
	host := ""
	if len(cfg.ListenHosts) > 0 {
		host = cfg.ListenHosts[0]
	}
	return "dns://" + net.JoinHostPort(host, cfg.Port)
}

// parse reads
//
//	spread FROM SERVICE... {
//	    endpoints NAME [PORT]
//	    refresh DURATION
//	    hedge MIN MAX
//	    attempts N
//	    read_timeout DURATION
//	    expire DURATION
//	    max_concurrent N
//	}
func parse(c *caddy.Controller) (*Spread, error) {
	s := &Spread{
		refresh: 5 * time.Second, readTimeout: 900 * time.Millisecond, expire: 10 * time.Second,
		hedgeMin: 100 * time.Millisecond, hedgeMax: 500 * time.Millisecond,
		attempts: 3, maxInFlight: 1000, port: "53",
		known: map[string]*upstream{}, stop: make(chan struct{}), done: make(chan struct{}), tries: make(chan tryJob),
		log: log.Infof, clock: time.Now,
	}
	if !c.Next() {
		return nil, c.ArgErr()
	}
	args := c.RemainingArgs()
	if len(args) < 2 {
		return nil, c.ArgErr()
	}
	zones := plugin.Host(args[0]).NormalizeExact()
	if len(zones) == 0 {
		return nil, fmt.Errorf("unable to normalize %q", args[0])
	}
	s.from = zones[0]
	var service []netip.AddrPort
	for _, a := range args[1:] {
		ap, err := hostPort(a)
		if err != nil {
			return nil, err
		}
		service = append(service, ap)
	}
	s.qtype = dns.TypeA
	if !service[0].Addr().Is4() {
		s.qtype = dns.TypeAAAA
	}
	for c.NextBlock() {
		var err error
		switch c.Val() {
		case "endpoints":
			v := c.RemainingArgs()
			if len(v) < 1 || len(v) > 2 {
				return nil, c.ArgErr()
			}
			s.name = dns.Fqdn(strings.ToLower(v[0]))
			if _, ok := dns.IsDomainName(s.name); !ok {
				return nil, fmt.Errorf("endpoints: %q is not a domain name", v[0])
			}
			if len(v) == 2 {
				if p, err := strconv.ParseUint(v[1], 10, 16); err != nil || p == 0 {
					return nil, fmt.Errorf("endpoints: %q is not a port", v[1])
				}
				s.port = v[1]
			}
		case "refresh":
			s.refresh, err = duration(c, time.Second)
		case "read_timeout":
			s.readTimeout, err = duration(c, 10*time.Millisecond)
		case "expire":
			s.expire, err = duration(c, time.Second)
		case "hedge":
			v := c.RemainingArgs()
			if len(v) != 2 {
				return nil, c.ArgErr()
			}
			if s.hedgeMin, err = time.ParseDuration(v[0]); err == nil {
				s.hedgeMax, err = time.ParseDuration(v[1])
			}
			if err == nil && (s.hedgeMin <= 0 || s.hedgeMax < s.hedgeMin) {
				err = fmt.Errorf("hedge: want 0 < MIN <= MAX, got %s %s", v[0], v[1])
			}
		case "attempts":
			var n int
			n, err = number(c)
			if err == nil && (n < 1 || n > 4) {
				err = fmt.Errorf("attempts: %d is not between 1 and 4", n)
			}
			s.attempts = n
		case "max_concurrent":
			var n int
			n, err = number(c)
			if err == nil && n < 1 {
				err = fmt.Errorf("max_concurrent: %d is not positive", n)
			}
			s.maxInFlight = int64(n)
		default:
			return nil, c.Errf("unknown property %q", c.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	if c.Next() {
		return nil, errors.New("spread can be used once per server block")
	}
	for _, ap := range service {
		s.service = append(s.service, s.newUpstream(ap.String(), true))
	}
	return s, nil
}

func hostPort(a string) (netip.AddrPort, error) {
	if ip, err := netip.ParseAddr(a); err == nil {
		return netip.AddrPortFrom(ip, 53), nil
	}
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return ap, fmt.Errorf("%q is not an IP address or IP:port", a)
	}
	return ap, nil
}

func duration(c *caddy.Controller, least time.Duration) (time.Duration, error) {
	name := c.Val()
	if !c.NextArg() {
		return 0, c.ArgErr()
	}
	d, err := time.ParseDuration(c.Val())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if d < least {
		return 0, fmt.Errorf("%s: %s is below %s", name, d, least)
	}
	return d, nil
}

func number(c *caddy.Controller) (int, error) {
	if !c.NextArg() {
		return 0, c.ArgErr()
	}
	return strconv.Atoi(c.Val())
}
