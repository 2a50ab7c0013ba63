package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// Podman runs containers the way the harness's kubelet does: podman with
// the harness's containers.conf (runc, cgroupfs, no network of its own).
type Podman struct {
	// Conf is the containers.conf path (image/containers.conf).
	Conf string
	// HooksDir holds the OCI hooks podman runs (WriteHooks); empty: none.
	HooksDir string
}

func (p Podman) command(ctx context.Context, args ...string) *exec.Cmd {
	if p.HooksDir != "" {
		args = append([]string{"--hooks-dir", p.HooksDir}, args...)
	}
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+p.Conf)
	return cmd
}

// Run runs podman with args and returns its standard output.
func (p Podman) Run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := p.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Logs returns a container's output, standard output and standard error
// together (podman logs writes the container's stderr to its own).
func (p Podman) Logs(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := p.command(ctx, "logs", name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman logs %s: %w: %s", name, err, out)
	}
	return string(out), nil
}

// LoadImage loads an OCI archive into podman's storage, tags it ref and
// returns ref.
func (p Podman) LoadImage(ctx context.Context, archive, ref string) error {
	out, err := p.Run(ctx, "load", "--quiet", "--input", archive)
	if err != nil {
		return err
	}
	// "Loaded image: NAME" (or "Loaded image(s): ...").
	_, loaded, ok := strings.Cut(strings.TrimSpace(out), ": ")
	if !ok {
		return fmt.Errorf("podman load printed %q, not the image it loaded", out)
	}
	loaded, _, _ = strings.Cut(loaded, ",")
	_, err = p.Run(ctx, "tag", strings.TrimSpace(loaded), ref)
	return err
}

// Pod is one pod of a DaemonSet, run as the harness's kubelet runs it: each
// container in podman on the node's network (hostNetwork), from the
// harness's image, with the container's args, securityContext, memory
// limit, volumes and the service-link environment kubelet builds.
type Pod struct {
	Name       string
	Containers map[string]*Container
	c          *Cluster
	dir        string
}

// Container is one running container of a Pod.
type Container struct {
	Name string // podman's name for it
	Spec corev1.Container
	pod  *Pod
}

// RunPod runs every container of the DaemonSet's pod template from image,
// under name (unique on the node: two pods of one DaemonSet run side by side
// during a rolling upgrade).
func (c *Cluster) RunPod(ctx context.Context, pm Podman, ds *appsv1.DaemonSet, image, name string) (*Pod, error) {
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		return nil, fmt.Errorf("DaemonSet %s is not hostNetwork; the harness runs only host-network pods", ds.Name)
	}
	p := &Pod{Name: name, Containers: map[string]*Container{}, c: c, dir: filepath.Join(c.dir, "pods", name)}
	env, err := c.serviceLinks(ctx, ds.Namespace, spec.EnableServiceLinks == nil || *spec.EnableServiceLinks)
	if err != nil {
		return nil, err
	}
	mounts, err := p.volumes(ctx, ds.Namespace, spec.Volumes)
	if err != nil {
		return nil, err
	}
	grace := int64(30)
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	for _, ctr := range spec.Containers {
		args := []string{"run", "--detach", "--name", fmt.Sprintf("%s-%s-%s", c.Node.Prefix, name, ctr.Name),
			"--network", "ns:/var/run/netns/" + c.Node.NS, "--stop-timeout", strconv.FormatInt(grace, 10)}
		sc, err := securityArgs(spec.SecurityContext, ctr.SecurityContext)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
		}
		args = append(args, sc...)
		if mem, ok := ctr.Resources.Limits[corev1.ResourceMemory]; ok {
			// No swap beyond the limit, as kubelet sets it.
			args = append(args, "--memory", strconv.FormatInt(mem.Value(), 10), "--memory-swap", strconv.FormatInt(mem.Value(), 10))
		}
		for _, e := range env {
			args = append(args, "--env", e)
		}
		for _, e := range ctr.Env {
			if e.ValueFrom != nil {
				v, err := c.fieldRef(ctr, e.ValueFrom)
				if err != nil {
					return nil, fmt.Errorf("container %s, env %s: %w", ctr.Name, e.Name, err)
				}
				e.Value = v
			}
			args = append(args, "--env", e.Name+"="+e.Value)
		}
		for _, m := range ctr.VolumeMounts {
			src, ok := mounts[m.Name]
			if !ok {
				return nil, fmt.Errorf("container %s mounts volume %s, which the pod does not define", ctr.Name, m.Name)
			}
			opt := "rw"
			if m.ReadOnly {
				opt = "ro"
			}
			args = append(args, "--volume", src+":"+m.MountPath+":"+opt)
		}
		if len(ctr.Command) > 0 {
			args = append(args, "--entrypoint", ctr.Command[0])
		}
		args = append(args, image)
		if len(ctr.Command) > 1 {
			args = append(args, ctr.Command[1:]...)
		}
		args = append(args, ctr.Args...)
		ct := &Container{Name: fmt.Sprintf("%s-%s-%s", c.Node.Prefix, name, ctr.Name), Spec: ctr, pod: p}
		if _, err := pm.Run(ctx, args...); err != nil {
			return nil, err
		}
		p.Containers[ctr.Name] = ct
		c.onClose(func() error {
			_, err := pm.Run(context.Background(), "rm", "--force", "--time", "0", ct.Name)
			return err
		})
	}
	return p, nil
}

// securityArgs turns a securityContext into podman's flags. Anything the
// harness cannot honour is an error rather than ignored.
func securityArgs(pod *corev1.PodSecurityContext, sc *corev1.SecurityContext) ([]string, error) {
	var args []string
	// Without runAsUser the image's user runs, as kubelet leaves it.
	user, group := int64(-1), int64(-1)
	if pod != nil && pod.RunAsUser != nil {
		user = *pod.RunAsUser
	}
	if pod != nil && pod.RunAsGroup != nil {
		group = *pod.RunAsGroup
	}
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.RunAsUser != nil {
		user = *sc.RunAsUser
	}
	if sc.RunAsGroup != nil {
		group = *sc.RunAsGroup
	}
	nonRoot := (pod != nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot) || (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot)
	switch {
	case nonRoot && user == 0:
		return nil, fmt.Errorf("runAsNonRoot with runAsUser 0: kubelet would not start it")
	case nonRoot && user < 0:
		return nil, fmt.Errorf("runAsNonRoot without runAsUser: the harness does not read the image's user")
	case user >= 0:
		u := strconv.FormatInt(user, 10)
		if group >= 0 {
			u += ":" + strconv.FormatInt(group, 10)
		}
		args = append(args, "--user", u)
	}
	if sc.Privileged != nil && *sc.Privileged {
		return nil, fmt.Errorf("privileged containers are not run by the harness")
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if c := sc.Capabilities; c != nil {
		for _, d := range c.Drop {
			args = append(args, "--cap-drop", string(d))
		}
		for _, a := range c.Add {
			args = append(args, "--cap-add", string(a))
		}
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod != nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp != nil {
		switch seccomp.Type {
		case corev1.SeccompProfileTypeRuntimeDefault: // podman's default profile
		case corev1.SeccompProfileTypeUnconfined:
			args = append(args, "--security-opt", "seccomp=unconfined")
		default:
			return nil, fmt.Errorf("seccomp profile %s is not run by the harness", seccomp.Type)
		}
	}
	return args, nil
}

// volumes materialises the pod's volumes on the node and returns the host
// path of each: a ConfigMap's data as files, a hostPath as itself.
func (p *Pod) volumes(ctx context.Context, ns string, vols []corev1.Volume) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range vols {
		switch {
		case v.ConfigMap != nil:
			cm, err := p.c.Client.CoreV1().ConfigMaps(ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			dir := filepath.Join(p.dir, "volumes", v.Name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
			for k, data := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, k), []byte(data), 0o644); err != nil {
					return nil, err
				}
			}
			out[v.Name] = dir
		case v.HostPath != nil:
			path := v.HostPath.Path
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathFileOrCreate {
				// As kubelet creates it (an existing file keeps its mode).
				f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
				if err != nil {
					return nil, fmt.Errorf("volume %s: %w", v.Name, err)
				}
				f.Close()
			}
			out[v.Name] = path
		default:
			return nil, fmt.Errorf("volume %s: only configMap and hostPath volumes are run by the harness", v.Name)
		}
	}
	return out, nil
}

// fieldRef resolves the downward-API fields a node agent uses: the node's
// name and address, and the container's own resource limits.
func (c *Cluster) fieldRef(ctr corev1.Container, src *corev1.EnvVarSource) (string, error) {
	if r := src.ResourceFieldRef; r != nil {
		if r.ContainerName != "" && r.ContainerName != ctr.Name {
			return "", fmt.Errorf("resourceFieldRef of another container (%s) is not run by the harness", r.ContainerName)
		}
		q, ok := ctr.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(r.Resource, "limits."))]
		if !strings.HasPrefix(r.Resource, "limits.") || !ok {
			return "", fmt.Errorf("resource %s is not known to the harness", r.Resource)
		}
		div := int64(1)
		if !r.Divisor.IsZero() {
			div = r.Divisor.Value()
		}
		return strconv.FormatInt(q.Value()/div, 10), nil
	}
	if src.FieldRef == nil {
		return "", fmt.Errorf("only fieldRef and resourceFieldRef values are run by the harness")
	}
	switch src.FieldRef.FieldPath {
	case "spec.nodeName":
		return c.NodeName, nil
	case "status.hostIP", "status.podIP":
		return NodeIP.String(), nil
	}
	return "", fmt.Errorf("field %s is not known to the harness", src.FieldRef.FieldPath)
}

// serviceLinks is the environment kubelet gives a pod in namespace ns: for
// the kubernetes Service always, and for every Service of ns when service
// links are enabled, NAME_SERVICE_HOST, NAME_SERVICE_PORT and
// NAME_SERVICE_PORT_<PORT NAME>, and the Docker-link variables
// (NAME_PORT, NAME_PORT_<port>_<PROTO>...), from the Services that exist
// when the pod starts.
func (c *Cluster) serviceLinks(ctx context.Context, ns string, enabled bool) ([]string, error) {
	var svcs []corev1.Service
	if enabled {
		list, err := c.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		svcs = list.Items
	}
	if ns != "default" || !enabled {
		k, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		svcs = append(svcs, *k)
	}
	return ServiceEnv(svcs), nil
}

// ServiceEnv renders kubelet's service-link variables for svcs (those with
// a ClusterIP), in kubelet's order.
func ServiceEnv(svcs []corev1.Service) []string {
	var env []string
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		env = append(env, name+"_SERVICE_HOST="+ip, fmt.Sprintf("%s_SERVICE_PORT=%d", name, s.Spec.Ports[0].Port))
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				env = append(env, fmt.Sprintf("%s_SERVICE_PORT_%s=%d", name, strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), p.Port))
			}
		}
		first := s.Spec.Ports[0]
		host := ip
		if strings.Contains(ip, ":") {
			host = "[" + ip + "]"
		}
		env = append(env, fmt.Sprintf("%s_PORT=%s://%s:%d", name, strings.ToLower(string(first.Protocol)), host, first.Port))
		for _, p := range s.Spec.Ports {
			proto := strings.ToLower(string(p.Protocol))
			prefix := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(proto))
			env = append(env,
				fmt.Sprintf("%s=%s://%s:%d", prefix, proto, host, p.Port),
				prefix+"_PROTO="+proto,
				fmt.Sprintf("%s_PORT=%d", prefix, p.Port),
				prefix+"_ADDR="+ip)
		}
	}
	slices.Sort(env)
	return slices.Compact(env)
}

// Stop stops the container as kubelet does (SIGTERM, SIGKILL after the
// grace period).
func (ct *Container) Stop(ctx context.Context, pm Podman) error {
	_, err := pm.Run(ctx, "stop", ct.Name)
	return err
}

// Kill sends SIGKILL.
func (ct *Container) Kill(ctx context.Context, pm Podman) error {
	_, err := pm.Run(ctx, "kill", "--signal", "KILL", ct.Name)
	return err
}

// Start starts the stopped container again (kubelet's restart).
func (ct *Container) Start(ctx context.Context, pm Podman) error {
	_, err := pm.Run(ctx, "start", ct.Name)
	return err
}

// Running reports whether the container runs.
func (ct *Container) Running(ctx context.Context, pm Podman) bool {
	out, err := pm.Run(ctx, "inspect", "--format", "{{.State.Running}}", ct.Name)
	return err == nil && strings.TrimSpace(out) == "true"
}

// ExitCode returns the container's exit code and whether it was
// OOM-killed.
func (ct *Container) ExitCode(ctx context.Context, pm Podman) (int, bool, error) {
	out, err := pm.Run(ctx, "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", ct.Name)
	if err != nil {
		return 0, false, err
	}
	code, oom, _ := strings.Cut(strings.TrimSpace(out), " ")
	n, err := strconv.Atoi(code)
	return n, oom == "true", err
}

// ProcessStatus returns the fields of /proc/PID/status of the container's
// process (read from the node, not through anything in the image): Uid,
// NoNewPrivs, CapEff, CapAmb and so on, by name.
func (ct *Container) ProcessStatus(ctx context.Context, pm Podman) (map[string]string, error) {
	out, err := pm.Run(ctx, "inspect", "--format", "{{.State.Pid}}", ct.Name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(out), "status"))
	if err != nil {
		return nil, fmt.Errorf("the process of %s: %w", ct.Name, err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields, nil
}

// Logs returns what the container logged.
func (ct *Container) Logs(ctx context.Context, pm Podman) string {
	out, err := pm.Logs(ctx, ct.Name)
	if err != nil {
		return err.Error()
	}
	return out
}

// WaitLog waits until the container's log contains marker.
func (ct *Container) WaitLog(ctx context.Context, pm Podman, marker string, timeout time.Duration) error {
	return poll(ctx, timeout, fmt.Sprintf("%q in the log of %s", marker, ct.Name), func() error {
		logs, err := pm.Logs(ctx, ct.Name)
		if err != nil {
			return err
		}
		if strings.Contains(logs, marker) {
			return nil
		}
		if !ct.Running(ctx, pm) {
			return errStopped(fmt.Errorf("%s stopped: %s", ct.Name, tail(logs)))
		}
		return fmt.Errorf("not yet")
	})
}

// Probe runs the container's probe (readiness or liveness) once, as kubelet
// does: an exec in the container, or an HTTP GET on the node's network.
func (ct *Container) Probe(ctx context.Context, pm Podman, probe *corev1.Probe) error {
	if probe == nil {
		return fmt.Errorf("%s has no such probe", ct.Spec.Name)
	}
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case probe.Exec != nil:
		_, err := pm.Run(ctx, append([]string{"exec", ct.Name}, probe.Exec.Command...)...)
		return err
	case probe.HTTPGet != nil:
		host := probe.HTTPGet.Host
		if host == "" {
			host = NodeIP.String()
		}
		url := fmt.Sprintf("http://%s:%s%s", host, probe.HTTPGet.Port.String(), probe.HTTPGet.Path)
		_, err := nodesim.Get(ctx, ct.pod.c.Node.NS, url)
		return err
	}
	return fmt.Errorf("%s: only exec and httpGet probes are run by the harness", ct.Spec.Name)
}

// Sweep removes the containers that a cluster of a process that no longer
// runs left behind (named nlk-<pid>-...), and none other.
func (p Podman) Sweep(ctx context.Context) error {
	out, err := p.Run(ctx, "ps", "--all", "--format", "{{.Names}}")
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(out) {
		rest, ok := strings.CutPrefix(name, "nlk-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		if _, err := p.Run(ctx, "rm", "--force", "--time", "0", name); err != nil {
			return err
		}
	}
	return nil
}
