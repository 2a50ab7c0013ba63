package sockets

import (
	"bufio"
	"net/netip"
	"strings"
	"testing"
)

func TestParseProcNet(t *testing.T) {
	// On little-endian machines the kernel prints each 32-bit word of the
	// address in host order.
	const udp = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: 0A00600A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  102: 0A00600A:0035 0100007F:0009 01 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
`
	const udp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   7: 000000FD00000000000000000A000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5151 2 0000000000000000 0
`
	got, err := parse("udp", bufio.NewScanner(strings.NewReader(udp)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Local != netip.MustParseAddrPort("10.96.0.10:53") || got[0].State != stateUDPIdle || got[0].Inode != 4242 {
		t.Errorf("IPv4: %+v", got)
	}
	if got[1].Remote != netip.MustParseAddrPort("127.0.0.1:9") {
		t.Errorf("connected socket's peer: %v", got[1].Remote)
	}
	got, err = parse("udp", bufio.NewScanner(strings.NewReader(udp6)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Local != netip.MustParseAddrPort("[fd00::a]:53") {
		t.Errorf("IPv6: %+v", got)
	}
}
