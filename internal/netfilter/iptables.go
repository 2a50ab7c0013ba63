package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Modes of the iptables tools.
const (
	ModeAuto   = "auto"
	ModeLegacy = "legacy"
	ModeNFT    = "nft"
)

// lockWait is how long a command waits for the xtables lock, in seconds.
const lockWait = 5

// Iptables is Tables through the iptables tools of one mode and family:
// go-iptables for checks and deletes, iptables-restore --noflush for atomic
// writes. Every command waits for the xtables lock.
type Iptables struct {
	ipt     *iptables.IPTables
	restore string
	mode    string
}

var _ Tables = (*Iptables)(nil)

// NewIptables returns the Tables of family f in mode (ModeLegacy or
// ModeNFT). It fails when the tools are not installed.
func NewIptables(f Family, mode string) (*Iptables, error) {
	base := "iptables"
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		base = "ip6tables"
		proto = iptables.ProtocolIPv6
	}
	name := base + "-" + mode
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("finding %s: %w (install the iptables package)", name, err)
	}
	restore, err := exec.LookPath(name + "-restore")
	if err != nil {
		return nil, fmt.Errorf("finding %s-restore: %w (install the iptables package)", name, err)
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(lockWait))
	if err != nil {
		return nil, fmt.Errorf("using %s: %w", name, err)
	}
	return &Iptables{ipt: ipt, restore: restore, mode: name}, nil
}

// Mode implements Tables.
func (t *Iptables) Mode() string { return t.mode }

// ChainExists implements Tables.
func (t *Iptables) ChainExists(table, chain string) (bool, error) {
	return t.ipt.ChainExists(table, chain)
}

// Rules implements Tables.
func (t *Iptables) Rules(table, chain string) (int, error) {
	lines, err := t.ipt.List(table, chain)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			n++
		}
	}
	return n, nil
}

// Exists implements Tables.
func (t *Iptables) Exists(table, chain string, spec []string) (bool, error) {
	ok, err := t.ipt.Exists(table, chain, spec...)
	if err != nil && isNotExist(err) {
		return false, nil
	}
	return ok, err
}

// Replace implements Tables with one iptables-restore --noflush run, which
// the kernel applies as one transaction.
func (t *Iptables) Replace(table string, chains map[string][][]string, jumps []Hook) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	names := make([]string, 0, len(chains))
	for c := range chains {
		names = append(names, c)
	}
	slices.Sort(names)
	for _, c := range names {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range names {
		for _, spec := range chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, quote(spec))
		}
	}
	for _, h := range jumps {
		fmt.Fprintf(&b, "-I %s 1 %s\n", h.Builtin, quote(h.JumpSpec()))
	}
	b.WriteString("COMMIT\n")
	return t.Restore(b.String())
}

// Restore applies an iptables-restore payload without flushing anything
// it does not name, as one transaction.
func (t *Iptables) Restore(payload string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*lockWait*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, t.restore, "-w", fmt.Sprint(lockWait), "--noflush")
	cmd.Stdin = strings.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running %s: %w: %s", t.restore, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// DeleteRule implements Tables; it deletes every copy of the rule.
func (t *Iptables) DeleteRule(table, chain string, spec []string) error {
	for range 16 {
		ok, err := t.Exists(table, chain, spec)
		if err != nil || !ok {
			return err
		}
		if err := t.ipt.Delete(table, chain, spec...); err != nil && !isNotExist(err) {
			return err
		}
	}
	return nil
}

// DeleteChain implements Tables.
func (t *Iptables) DeleteChain(table, chain string) error {
	ok, err := t.ipt.ChainExists(table, chain)
	if err != nil || !ok {
		return err
	}
	if err := t.ipt.ClearAndDeleteChain(table, chain); err != nil && !isNotExist(err) {
		return err
	}
	return nil
}

func isNotExist(err error) bool {
	e, ok := err.(*iptables.Error)
	return ok && e.IsNotExist()
}

// quote renders spec for iptables-restore, quoting arguments with spaces.
func quote(spec []string) string {
	parts := make([]string, len(spec))
	for i, s := range spec {
		if strings.ContainsAny(s, " \t\"") {
			s = `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
		}
		parts[i] = s
	}
	return strings.Join(parts, " ")
}

// Detection is what DetectMode found: the mode and why.
type Detection struct {
	Mode string
	// Reason says which rules decided, for the log.
	Reason string
}

// SaveFunc runs an iptables save tool (such as "iptables-legacy-save") and
// returns what it printed. It returns an error satisfying
// errors.Is(err, exec.ErrNotFound) when the tool is not installed.
type SaveFunc func(ctx context.Context, tool string) ([]byte, error)

// RunSave is the SaveFunc that runs the installed tool.
func RunSave(ctx context.Context, tool string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*lockWait*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// DetectMode picks iptables-legacy or iptables-nft the way kube-proxy's
// iptables wrapper does: the mode whose tables hold kubelet's hint chains,
// else the one with more rules, nft on a tie. It never guesses: when a
// backend's rules cannot be read (a container without NET_RAW, a process
// without NET_ADMIN) it returns an error rather than count them as none, since
// the rules would then go to the backend kube-proxy may not use. A backend
// whose tools are not installed holds no rules. Only the families given are
// read (the agent's: an IPv4-only agent does not depend on ip6tables).
func DetectMode(ctx context.Context, save SaveFunc, families ...Family) (Detection, error) {
	bases := []string{"iptables", "ip6tables"}
	if len(families) > 0 {
		bases = nil
		for _, f := range []Family{IPv4, IPv6} {
			if slices.Contains(families, f) {
				bases = append(bases, map[Family]string{IPv4: "iptables", IPv6: "ip6tables"}[f])
			}
		}
	}
	type count struct {
		rules int
		hint  bool
	}
	counts := map[string]count{}
	for _, mode := range []string{ModeLegacy, ModeNFT} {
		var c count
		for _, base := range bases {
			tool := base + "-" + mode + "-save"
			out, err := save(ctx, tool)
			if errors.Is(err, exec.ErrNotFound) {
				continue
			}
			if err != nil {
				return Detection{}, fmt.Errorf("reading the %s rules with %s to tell which iptables mode the node uses: %w "+
					"(give the agent NET_ADMIN and NET_RAW, or set --netfilter=iptables-legacy, iptables-nft or nftables)", base+"-"+mode, tool, err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "-") {
					c.rules++
				}
				if strings.HasPrefix(l, ":KUBE-IPTABLES-HINT") || strings.HasPrefix(l, ":KUBE-KUBELET-CANARY") {
					c.hint = true
				}
			}
		}
		counts[mode] = c
	}
	legacy, nft := counts[ModeLegacy], counts[ModeNFT]
	switch {
	case legacy.hint && !nft.hint:
		return Detection{ModeLegacy, "kubelet's hint chains are in iptables-legacy"}, nil
	case nft.hint && !legacy.hint:
		return Detection{ModeNFT, "kubelet's hint chains are in iptables-nft"}, nil
	case legacy.rules > nft.rules:
		return Detection{ModeLegacy, fmt.Sprintf("iptables-legacy holds more rules (%d against %d)", legacy.rules, nft.rules)}, nil
	default:
		return Detection{ModeNFT, fmt.Sprintf("iptables-legacy holds no more rules than iptables-nft (%d against %d)", legacy.rules, nft.rules)}, nil
	}
}
