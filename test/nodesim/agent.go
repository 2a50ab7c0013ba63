package nodesim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Agent is a node-local-coredns process running in the node's namespace
// (or, started with Start, any process in a namespace).
type Agent struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// StartAgent starts binary in the node's namespace with args and the
// service environment kubelet would give a pod.
func (n *Node) StartAgent(binary string, args ...string) (*Agent, error) {
	return n.startAgent(nil, binary, args)
}

// StartAgentAs is StartAgent as user uid, without any capability.
func (n *Node) StartAgentAs(uid int, binary string, args ...string) (*Agent, error) {
	id := strconv.Itoa(uid)
	return n.startAgent([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"}, binary, args)
}

func (n *Node) startAgent(wrapper []string, binary string, args []string) (*Agent, error) {
	return Start(n.NS, n.ServiceEnv(), append(append(wrapper, binary), args...)...)
}

// Start runs argv in namespace ns with env added to this process's
// environment. The returned Agent is any process: an agent, a watchdog, or
// a component of the real-component cluster.
func Start(ns string, env []string, argv ...string) (*Agent, error) {
	return startCmd(env, append([]string{"ip", "netns", "exec", ns}, argv...))
}

// startCmd runs argv (a command that enters the namespace itself).
func startCmd(env []string, argv []string) (*Agent, error) {
	binary := argv[0]
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	a := &Agent{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = a.out
	cmd.Stderr = a.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

// ServiceEnv is the environment kubelet injects for the two Services.
func (n *Node) ServiceEnv() []string {
	return []string{
		"KUBE_DNS_SERVICE_HOST=" + KubeDNS.String(),
		"KUBE_DNS_SERVICE_PORT=53",
		"KUBE_DNS_SERVICE_PORT_DNS=53",
		"NODE_LOCAL_COREDNS_SERVICE_HOST=" + NodeLocalDNS.String(),
		"NODE_LOCAL_COREDNS_SERVICE_PORT=53",
		"NODE_LOCAL_COREDNS_SERVICE_PORT_DNS=53",
	}
}

// Pid returns the agent's process id.
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Output returns what the agent has logged so far.
func (a *Agent) Output() string { return a.out.String() }

// Signal sends sig to the agent.
func (a *Agent) Signal(sig syscall.Signal) error { return a.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the agent to exit and returns its exit code.
func (a *Agent) Wait(timeout time.Duration) (int, error) {
	select {
	case <-a.done:
		return a.cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("agent still running after %s", timeout)
	}
}

// Exited reports whether the agent has exited.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits up to timeout; it kills the agent if it
// does not exit. It returns the exit code.
func (a *Agent) Stop(timeout time.Duration) (int, error) {
	if a.Exited() {
		return a.cmd.ProcessState.ExitCode(), nil
	}
	_ = a.Signal(syscall.SIGTERM)
	code, err := a.Wait(timeout)
	if err != nil {
		_ = a.Signal(syscall.SIGKILL)
		<-a.done
	}
	return code, err
}

// WaitLog waits until the agent's output contains marker.
func (a *Agent) WaitLog(ctx context.Context, marker string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if bytes.Contains([]byte(a.Output()), []byte(marker)) {
			return nil
		}
		if a.Exited() {
			return fmt.Errorf("agent exited before %q: %s", marker, a.Output())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no %q in the agent's log after %s: %s", marker, timeout, a.Output())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartAgentIn is StartAgent with the agent in memory cgroup cg from its
// first instruction: a shell joins the cgroup, then becomes ip netns exec,
// which becomes the agent (inside, ip netns exec's /sys has no cgroups).
func (n *Node) StartAgentIn(cg *MemoryCgroup, binary string, args ...string) (*Agent, error) {
	join := `echo $$ > "$NLC_CGROUP_PROCS" && exec "$0" "$@"`
	argv := append([]string{"sh", "-c", join, "ip", "netns", "exec", n.NS, binary}, args...)
	return startCmd(append(n.ServiceEnv(), "NLC_CGROUP_PROCS="+cg.Path+"/cgroup.procs"), argv)
}
