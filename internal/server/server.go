// Package server runs the embedded CoreDNS: the compiled plugin set, start
// from a rendered Corefile, in-process reload through the reload plugin, and
// graceful stop. It uses CoreDNS's caddy/dnsserver API directly, as
// CoreDNS's own integration tests do, and never imports coremain.
package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/node-local-coredns/node-local-coredns/plugin/fastcache"
	"github.com/node-local-coredns/node-local-coredns/plugin/spread"
)

const serverType = "dns"

// Source renders the Corefile to run. The reload plugin calls it every
// reload interval; an error keeps the running configuration.
type Source func() (string, error)

// Server is a running embedded CoreDNS.
type Server struct {
	source Source

	mu   sync.Mutex
	inst *caddy.Instance
}

// input is the caddy.Input of a Server; it carries its owner so that the
// instance started by a reload can be traced back to it.
type input struct {
	body  []byte
	owner *Server
}

func (i *input) Body() []byte       { return i.body }
func (i *input) Path() string       { return "Corefile" }
func (i *input) ServerType() string { return serverType }

var (
	hookOnce sync.Once
	// active is the one Server whose Source the reload plugin reads. CoreDNS's
	// loader registry is process-wide, so a process reloads one Server.
	activeMu sync.Mutex
	active   *Server
)

func installHooks() {
	hookOnce.Do(func() {
		fastcache.Register()
		spread.Register()
		caddy.Quiet = true
		dnsserver.Quiet = true
		caddy.SetDefaultCaddyfileLoader("node-local-coredns", caddy.LoaderFunc(load))
		caddy.RegisterEventHook("node-local-coredns", func(ev caddy.EventName, info any) error {
			if ev != caddy.InstanceStartupEvent {
				return nil
			}
			inst, ok := info.(*caddy.Instance)
			if !ok {
				return nil
			}
			if in, ok := inst.Caddyfile().(*input); ok {
				in.owner.setInstance(inst)
			}
			return nil
		})
	})
}

// load is the caddy loader behind the reload plugin.
func load(string) (caddy.Input, error) {
	activeMu.Lock()
	s := active
	activeMu.Unlock()
	if s == nil {
		return nil, errors.New("no node-local-coredns server is running")
	}
	body, err := s.source()
	if err != nil {
		return nil, err
	}
	return &input{body: []byte(body), owner: s}, nil
}

// Start renders the Corefile from source and starts serving it. Only one
// Server per process follows reloads.
func Start(source Source) (*Server, error) {
	installHooks()
	body, err := source()
	if err != nil {
		return nil, err
	}
	s := &Server{source: source}
	inst, err := caddy.Start(&input{body: []byte(body), owner: s})
	if err != nil {
		if inst != nil {
			inst.Stop()
		}
		return nil, fmt.Errorf("starting CoreDNS: %w", err)
	}
	s.setInstance(inst)
	activeMu.Lock()
	active = s
	activeMu.Unlock()
	// The fast path takes its addresses as CoreDNS starts serving them, just
	// after caddy.Start returns; a server block it cannot attach to (not
	// plain DNS) gives up the wait after a second.
	fastcache.Attached(time.Second)
	return s, nil
}

func (s *Server) setInstance(inst *caddy.Instance) {
	s.mu.Lock()
	s.inst = inst
	s.mu.Unlock()
}

func (s *Server) instance() *caddy.Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inst
}

// Corefile returns the Corefile the server is running now.
func (s *Server) Corefile() string {
	return string(s.instance().Caddyfile().Body())
}

// Addrs returns the UDP and TCP listen addresses of every server block.
func (s *Server) Addrs() (udp, tcp []string) {
	for _, sl := range s.instance().Servers() {
		if a := sl.LocalAddr(); a != nil {
			udp = append(udp, a.String())
		}
		if a := sl.Addr(); a != nil {
			tcp = append(tcp, a.String())
		}
	}
	return udp, tcp
}

// Stop stops serving: in-flight queries are answered (within CoreDNS's
// grace timeout), then the listeners close and the plugins' shutdown
// callbacks (health, ready, metrics listeners) run.
func (s *Server) Stop() error {
	activeMu.Lock()
	if active == s {
		active = nil
	}
	activeMu.Unlock()
	inst := s.instance()
	err := inst.Stop()
	if errs := inst.ShutdownCallbacks(); len(errs) > 0 {
		err = errors.Join(append([]error{err}, errs...)...)
	}
	if err != nil {
		return fmt.Errorf("stopping CoreDNS: %w", err)
	}
	return nil
}

// Plugins lists the plugins compiled into this binary, sorted.
func Plugins() []string {
	fastcache.Register()
	spread.Register()
	var out []string
	for _, name := range caddy.ListPlugins()["others"] {
		if p, ok := strings.CutPrefix(name, serverType+"."); ok {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
