package netfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// NFT is the native backend: the agent's own table, inet node-local-coredns,
// written over netlink (no iptables binary), in one batch that the kernel
// applies as one transaction.
//
// An accept in one nftables table does not override a drop in another, so
// the accept half of the design goes where the host filters:
//   - a host chain of its own (any table but iptables-nft's) at the input
//     or output hook with a drop policy gets the agent's accept rules at its
//     top, marked with the same comments, restored by the sync loop and
//     removed at teardown;
//   - where the host filters INPUT/OUTPUT through iptables (kube-proxy's
//     iptables mode), Filter writes the accept rules there with the
//     iptables tools, in the agent's own chains, as the iptables backend does.
type NFT struct {
	conn *nftables.Conn
	ips  []netip.Addr
	opts Options
	log  *slog.Logger
	// Filter, if set, holds the accept rules in iptables' filter table.
	Filter *Manager
	// Leftovers are iptables tables where an agent on the iptables backend
	// (an earlier version) may have left its chains: Setup removes them,
	// and so do the first leftoverSyncs syncs, while the earlier agent of a
	// rolling upgrade may still be running and putting them back.
	Leftovers     []Tables
	leftoverSyncs int

	socketFallback bool
}

var table = &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyINet}

// NewNFT returns the native backend for ips. filter, if not nil, is an
// iptables Manager with Options.FilterOnly for the host's iptables filter
// table.
func NewNFT(ips []netip.Addr, opts Options, filter *Manager, log *slog.Logger) (*NFT, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening netlink to nftables: %w", err)
	}
	return &NFT{conn: conn, ips: ips, opts: opts, Filter: filter, log: log}, nil
}

// Name names the step for logs and metrics.
func (n *NFT) Name() string { return "rules" }

// Mode names the backend, and where the accept rules go when that is iptables.
func (n *NFT) Mode() string {
	if n.Filter != nil {
		return "nftables, accept rules in " + n.Filter.Mode()
	}
	return "nftables"
}

// SocketMatch reports whether the prerouting rules are gated on a bound socket.
func (n *NFT) SocketMatch() bool { return n.opts.SocketMatch && !n.socketFallback }

func (n *NFT) rules(socket bool) []nftRule {
	o := n.opts
	o.SocketMatch = socket
	return nftRules(n.ips, o)
}

func base(name string, hook *nftables.ChainHook) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: name, Table: table, Hooknum: hook, Priority: nftables.ChainPriorityRaw,
		Type: nftables.ChainTypeFilter, Policy: &accept}
}

var (
	preroutingChain = base(NFTPrerouting, nftables.ChainHookPrerouting)
	outputChain     = base(NFTOutput, nftables.ChainHookOutput)
	fenceChain      = &nftables.Chain{Name: NFTFence, Table: table}
)

func chainOf(name string) *nftables.Chain {
	switch name {
	case NFTPrerouting:
		return preroutingChain
	case NFTOutput:
		return outputChain
	}
	return fenceChain
}

// Setup writes the agent's table, keeping what the watchdog's fence chain
// holds, and the accept rules. When the kernel refuses the socket
// expression it falls back to ungated rules and says so.
func (n *NFT) Setup() error {
	err := n.write()
	if err != nil && n.SocketMatch() {
		n.socketFallback = true
		if err2 := n.write(); err2 != nil {
			n.socketFallback = false
			return errors.Join(err, err2)
		}
		n.log.Warn("kernel refused the socket expression: queries are diverted even while no agent listens; a crashed agent leaves this node's DNS broken until it is back", "error", err)
	} else if err != nil {
		return err
	}
	n.leftoverSyncs = leftoverSyncs
	n.removeLeftovers()
	if n.Filter != nil {
		return n.Filter.Setup()
	}
	return nil
}

// leftoverSyncs is how many syncs after setup remove an earlier agent's
// iptables chains: at the default 10 s interval, the first 5 minutes, more
// than a rolling upgrade's overlap.
const leftoverSyncs = 30

// removeLeftovers removes an earlier agent's iptables chains: an agent of
// an earlier version, on the iptables backend, leaves its rules to the
// agent that replaces it in a rolling upgrade.
func (n *NFT) removeLeftovers() {
	for _, t := range n.Leftovers {
		if err := Remove(t); err != nil {
			n.log.Warn("could not remove an earlier agent's iptables rules; they are gated on the socket and harmless", "backend", t.Mode(), "error", err)
		}
	}
}

// write replaces the content of the agent's base chains and puts the
// accept rules at the top of the host's drop-policy chains, in one batch.
func (n *NFT) write() error {
	foreign, err := n.dropChains()
	if err != nil {
		return err
	}
	n.conn.AddTable(table)
	n.conn.AddChain(fenceChain)
	for _, c := range []*nftables.Chain{preroutingChain, outputChain} {
		n.conn.AddChain(c)
		n.conn.FlushChain(c)
	}
	for _, r := range n.rules(n.SocketMatch()) {
		n.conn.AddRule(&nftables.Rule{Table: table, Chain: chainOf(r.Chain), Exprs: r.Exprs, UserData: comment(r.Comment)})
	}
	for _, c := range foreign {
		if err := n.replaceAccepts(c); err != nil {
			return err
		}
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("writing table inet %s: %w", NFTTable, err)
	}
	return nil
}

// replaceAccepts queues the removal of the agent's rules from a host chain
// and the insertion of the current ones at its top.
func (n *NFT) replaceAccepts(c *nftables.Chain) error {
	have, err := ruleRefs(c)
	if err != nil {
		return err
	}
	for _, r := range have {
		if r.ours() {
			if err := n.conn.DelRule(&nftables.Rule{Table: c.Table, Chain: c, Handle: r.Handle}); err != nil {
				return fmt.Errorf("deleting a rule of ours from %s: %w", chainName(c), err)
			}
		}
	}
	want := acceptRules(n.ips, n.opts, uint32(*c.Hooknum), byte(c.Table.Family))
	// Each insertion goes to the top: insert the last first.
	for _, r := range slices.Backward(want) {
		n.conn.InsertRule(&nftables.Rule{Table: c.Table, Chain: c, Exprs: r.Exprs, UserData: comment(r.Comment)})
	}
	return nil
}

// dropChains returns the host's base chains at the input and output hooks
// whose policy is drop, outside the agent's table and iptables-nft's tables
// (those are the iptables backend's business: Filter).
func (n *NFT) dropChains() ([]*nftables.Chain, error) {
	chains, err := n.conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []*nftables.Chain
	for _, c := range chains {
		if c.Hooknum == nil || c.Policy == nil || *c.Policy != nftables.ChainPolicyDrop || c.Type != nftables.ChainTypeFilter {
			continue
		}
		if h := *c.Hooknum; h != *nftables.ChainHookInput && h != *nftables.ChainHookOutput {
			continue
		}
		switch c.Table.Family {
		case nftables.TableFamilyINet, nftables.TableFamilyIPv4, nftables.TableFamilyIPv6:
		default:
			continue
		}
		if (c.Table.Name == NFTTable && c.Table.Family == table.Family) || iptablesNFTChain(c.Table.Family, c.Table.Name, c.Name) {
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// iptablesNFTChain reports whether a chain is one of iptables-nft's built-in
// chains (family ip or ip6, table and chain named as iptables names them).
func iptablesNFTChain(family nftables.TableFamily, tableName, chain string) bool {
	if family != nftables.TableFamilyIPv4 && family != nftables.TableFamilyIPv6 {
		return false
	}
	switch tableName {
	case "filter", "nat", "mangle", "raw", "security":
	default:
		return false
	}
	return chain == strings.ToUpper(chain)
}

func chainName(c *nftables.Chain) string {
	fam := map[nftables.TableFamily]string{nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6"}[c.Table.Family]
	return fmt.Sprintf("%s %s/%s", fam, c.Table.Name, c.Name)
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return strings.TrimRight(s, "\x00")
}

func isOurs(r *nftables.Rule) bool {
	c := commentOf(r)
	return c == Comment || strings.HasPrefix(c, Comment+":")
}

// inSync reports whether the agent's table holds exactly its chains and
// rules (gated on the socket or not), and every host drop chain starts with
// the agent's accept rules. The fence chain's content is the watchdog's.
func (n *NFT) inSync(socket bool) (bool, error) {
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("listing nftables chains: %w", err)
	}
	found := map[string]*nftables.Chain{}
	for _, c := range chains {
		if c.Table.Name == NFTTable {
			found[c.Name] = c
		}
	}
	for _, want := range []*nftables.Chain{preroutingChain, outputChain, fenceChain} {
		c := found[want.Name]
		if c == nil || !sameHook(c, want) {
			return false, nil
		}
	}
	want := n.rules(socket)
	for _, name := range []string{NFTPrerouting, NFTOutput} {
		have, err := n.conn.GetRules(table, chainOf(name))
		if err != nil {
			return false, fmt.Errorf("listing inet %s/%s: %w", NFTTable, name, err)
		}
		var wantHere []nftRule
		for _, r := range want {
			if r.Chain == name {
				wantHere = append(wantHere, r)
			}
		}
		if !sameRules(have, wantHere) {
			return false, nil
		}
	}
	foreign, err := n.dropChains()
	if err != nil {
		return false, err
	}
	for _, c := range foreign {
		// The host's rules are read for their comments only (see
		// ruleRefs): the agent's must come first, in order, and nowhere
		// else.
		have, err := ruleRefs(c)
		if err != nil {
			return false, err
		}
		want := acceptRules(n.ips, n.opts, uint32(*c.Hooknum), byte(c.Table.Family))
		if len(have) < len(want) {
			return false, nil
		}
		for i, r := range have {
			if (i < len(want) && r.Comment != want[i].Comment) || (i >= len(want) && r.ours()) {
				return false, nil
			}
		}
	}
	return true, nil
}

func sameHook(c, want *nftables.Chain) bool {
	if want.Hooknum == nil {
		return c.Hooknum == nil
	}
	return c.Hooknum != nil && *c.Hooknum == *want.Hooknum && c.Priority != nil && *c.Priority == *want.Priority &&
		c.Type == want.Type && c.Policy != nil && *c.Policy == *want.Policy
}

// sameRules compares rules read from the kernel with the ones written.
// google/nftables reads a socket expression back as nothing (it has no
// parser for it), so the comparison leaves it out of what was written; the
// comparison of the register it sets (socket transparent 0) stays, so a gated
// rule still differs from an ungated one.
func sameRules(have []*nftables.Rule, want []nftRule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		w := slices.DeleteFunc(slices.Clone(want[i].Exprs), func(e expr.Any) bool { _, ok := e.(*expr.Socket); return ok })
		if commentOf(r) != want[i].Comment || !reflect.DeepEqual(r.Exprs, w) {
			return false
		}
	}
	return true
}

// Sync rewrites the agent's table and accept rules when they are not what
// they should be, and reports how many it rewrote (0 or 1, plus what the
// iptables filter part restored).
func (n *NFT) Sync() (int, error) {
	if n.leftoverSyncs > 0 {
		n.leftoverSyncs--
		n.removeLeftovers()
	}
	restored := 0
	ok, err := n.inSync(n.SocketMatch())
	var errs []error
	switch {
	case err != nil:
		errs = append(errs, err)
	case !ok:
		if err := n.write(); err != nil {
			errs = append(errs, fmt.Errorf("restoring: %w", err))
		} else {
			n.log.Warn("restored rules that were missing or changed", "backend", "nftables", "table", "inet "+NFTTable)
			restored++
		}
	}
	if n.Filter != nil {
		r, err := n.Filter.Sync()
		restored += r
		errs = append(errs, err)
	}
	return restored, errors.Join(errs...)
}

// Installed reports whether everything is in place, with or without the
// socket expression, and whether the rules are gated on the socket.
func (n *NFT) Installed() (ok, gated bool, err error) {
	for _, socket := range []bool{true, false} {
		in, err := n.inSync(socket)
		if err != nil {
			return false, false, err
		}
		if in {
			if n.Filter != nil {
				ok, _, err := n.Filter.Installed()
				return ok, socket, err
			}
			return true, socket, nil
		}
	}
	return false, false, nil
}

// Teardown removes the agent's table (the fence chain with it), its accept
// rules from the host's chains, and the iptables filter part.
func (n *NFT) Teardown() error {
	errs := []error{RemoveNFT(n.conn)}
	if n.Filter != nil {
		errs = append(errs, n.Filter.Teardown())
	}
	return errors.Join(errs...)
}

// RemoveNFT deletes the agent's table and its rules in the host's chains,
// whoever installed them; what is already gone is not an error.
func RemoveNFT(conn *nftables.Conn) error {
	chains, err := conn.ListChains()
	if err != nil {
		return fmt.Errorf("listing nftables chains: %w", err)
	}
	queued := hasTable(chains)
	if queued {
		conn.DelTable(table)
	}
	for _, c := range chains {
		if c.Hooknum == nil || (c.Table.Name == NFTTable && c.Table.Family == table.Family) {
			continue
		}
		rules, err := ruleRefs(c)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.ours() {
				if err := conn.DelRule(&nftables.Rule{Table: c.Table, Chain: c, Handle: r.Handle}); err != nil {
					return err
				}
				queued = true
			}
		}
	}
	if !queued {
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("removing table inet %s: %w", NFTTable, err)
	}
	return nil
}

func hasTable(chains []*nftables.Chain) bool {
	for _, c := range chains {
		if c.Table.Name == NFTTable && c.Table.Family == table.Family {
			return true
		}
	}
	return false
}

// NFTFencer is the watchdog's fence in the agent's table.
type NFTFencer struct{ conn *nftables.Conn }

// NewNFTFencer returns the fence of the native backend.
func NewNFTFencer() (*NFTFencer, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening netlink to nftables: %w", err)
	}
	return &NFTFencer{conn: conn}, nil
}

// Fence fills the fence chain with an accept per IP and protocol, creating
// the table and the prerouting chain's jump when the agent has not (yet).
func (f *NFTFencer) Fence(ips []netip.Addr, port uint16) error {
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("fencing: listing nftables chains: %w", err)
	}
	havePre := false
	for _, c := range chains {
		havePre = havePre || (c.Table.Name == NFTTable && c.Name == NFTPrerouting)
	}
	f.conn.AddTable(table)
	f.conn.AddChain(fenceChain)
	f.conn.FlushChain(fenceChain)
	for _, r := range fenceRules(ips, port) {
		f.conn.AddRule(&nftables.Rule{Table: table, Chain: fenceChain, Exprs: r.Exprs, UserData: comment(r.Comment)})
	}
	if !havePre {
		f.conn.AddChain(preroutingChain)
		jump := nftRules(nil, Options{})[0]
		f.conn.AddRule(&nftables.Rule{Table: table, Chain: preroutingChain, Exprs: jump.Exprs, UserData: comment(jump.Comment)})
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("fencing in nftables: %w", err)
	}
	return nil
}

// Unfence empties the fence chain; a table or chain already gone is not
// an error.
func (f *NFTFencer) Unfence() error {
	ok, err := f.Fenced()
	if err != nil || !ok {
		return err
	}
	f.conn.FlushChain(fenceChain)
	if err := f.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing fence in nftables: %w", err)
	}
	return nil
}

// Fenced reports whether the fence chain holds rules.
func (f *NFTFencer) Fenced() (bool, error) {
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("listing nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == NFTTable && c.Name == NFTFence {
			rules, err := f.conn.GetRules(table, fenceChain)
			if err != nil {
				return false, fmt.Errorf("listing the fence chain: %w", err)
			}
			return len(rules) > 0, nil
		}
	}
	return false, nil
}

// Mode names the backend.
func (f *NFTFencer) Mode() string { return "nftables" }
