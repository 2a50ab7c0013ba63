package netfilter

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ruleRef is what the native backend needs of a rule in a host's chain:
// its handle and its comment. Reading only these does not parse the rule's
// expressions, which google/nftables cannot all parse (a host's
// `ct original ip daddr` fails there): the host's rules are not ours to
// understand.
type ruleRef struct {
	Handle  uint64
	Comment string
}

// ruleRefs lists the rules of chain c, in order, over netlink in the
// calling thread's network namespace.
func ruleRefs(c *nftables.Chain) ([]ruleRef, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening netlink to nftables: %w", err)
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(c.Table.Name + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(c.Name + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{byte(c.Table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("listing the rules of %s: %w", chainName(c), err)
	}
	var out []ruleRef
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var r ruleRef
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_HANDLE:
				if b := ad.Bytes(); len(b) == 8 {
					r.Handle = binary.BigEndian.Uint64(b)
				}
			case unix.NFTA_RULE_USERDATA:
				r.Comment = commentOf(&nftables.Rule{UserData: ad.Bytes()})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (r ruleRef) ours() bool { return isOurs(&nftables.Rule{UserData: comment(r.Comment)}) }
