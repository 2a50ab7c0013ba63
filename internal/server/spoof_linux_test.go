package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

// inNamespace runs the calling test again in a network namespace of its
// own (created here, removed after), as root, so that its raw sockets and
// loopback traffic touch nothing of the machine's. It reports whether the
// caller is that run.
func inNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv("NLC_TEST_NETNS") != "" {
		return true
	}
	if os.Geteuid() != 0 {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatal("NODESIM_REQUIRED is set but this test needs root (a namespace and raw sockets)")
		}
		t.Skip("needs root: a network namespace and raw sockets")
	}
	ns := fmt.Sprintf("nlc-%d-%s", os.Getpid(), strings.ToLower(t.Name()))
	if len(ns) > 40 {
		ns = ns[:40]
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("adding namespace %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "NLC_TEST_NETNS="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("the run in namespace %s failed: %v", ns, err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the run in namespace %s did not run %s", ns, t.Name())
	}
	return false
}

// Forged answers, sent from a raw socket as if from kube-dns to every UDP
// port the agent has open, with every one of the 65,536 IDs, while kube-dns
// is slow to answer, never enter the cache: the built-in Corefile forwards
// every zone over TCP, so there is no UDP forwarder to aim at. The control
// case, the same Corefile with a UDP forwarder, shows that the forger finds
// its socket.
func TestForgedAnswersNeverCached(t *testing.T) {
	if !inNamespace(t) {
		return
	}
	up := startBigUpstream(t, 600*time.Millisecond)
	for _, tc := range []struct {
		name string
		udp  bool
	}{{"built-in", false}, {"control: a UDP forwarder", true}} {
		t.Run(tc.name, func(t *testing.T) {
			text := corefile.Default
			if tc.udp {
				// forward as it is configured by default: UDP to kube-dns.
				text = regexp.MustCompile(`(?s)spread \. (\{\{ join \.Upstreams " " \}\}) \{.*?\n    \}`).ReplaceAllString(text, "forward . $1")
			}
			addr := startBuiltInText(t, up.addr, text)
			name := fmt.Sprintf("victim-%d.example.org.", time.Now().UnixNano())
			type result struct {
				r   *dns.Msg
				err error
			}
			done := make(chan result, 1)
			go func() {
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
				done <- result{r, err}
			}()
			time.Sleep(50 * time.Millisecond) // the miss is at kube-dns now
			listenPort := netip.MustParseAddrPort(addr).Port()
			ports, forwarders, err := udpPorts(up.addr)
			if err != nil {
				t.Fatal(err)
			}
			if tc.udp && len(forwarders) == 0 {
				t.Fatal("no UDP socket connected to kube-dns found: the forger cannot see a UDP forwarder")
			}
			if !tc.udp && len(forwarders) != 0 {
				t.Errorf("UDP sockets connected to kube-dns: %v; every zone must be forwarded over TCP", forwarders)
			}
			var sent int
			start := time.Now()
			// The forwarders' ports first, while the miss waits for kube-dns.
			ports = append(forwarders, ports...)
			for _, p := range ports {
				if p == up.addr.Port() {
					continue
				}
				n, err := forge(up.addr, netip.AddrPortFrom(up.addr.Addr(), p), name)
				if err != nil {
					t.Fatal(err)
				}
				sent += n
			}
			t.Logf("%d forged answers to %d UDP ports (the agent listens on %d) in %s", sent, len(ports)-1, listenPort, time.Since(start).Round(time.Millisecond))
			res := <-done
			if res.err != nil {
				t.Fatalf("the client's query: %v", res.err)
			}
			// The answer, and the cached answer after it.
			poisoned := false
			for i, r := range []*dns.Msg{res.r, ask(t, addr, name)} {
				for _, rr := range r.Answer {
					if a, ok := rr.(*dns.A); ok && a.A.Equal(net.IPv4(6, 6, 6, 6)) {
						poisoned = true
						if !tc.udp {
							t.Errorf("answer %d carries the forged record: %v", i, r.Answer)
						}
					}
				}
			}
			if tc.udp {
				t.Logf("control: the UDP forwarder was poisoned: %v", poisoned)
			}
		})
	}
}

func ask(t *testing.T, addr, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("asking %s: %v", name, err)
	}
	return r
}

// udpPorts lists the IPv4 UDP ports bound in this namespace, and those of
// sockets connected to peer.
func udpPorts(peer netip.AddrPort) (ports, connected []uint16, err error) {
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	hexAddr := func(s string) (netip.AddrPort, error) {
		host, port, ok := strings.Cut(s, ":")
		if !ok || len(host) != 8 {
			return netip.AddrPort{}, errors.New("bad address " + s)
		}
		h, err := strconv.ParseUint(host, 16, 32)
		if err != nil {
			return netip.AddrPort{}, err
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			return netip.AddrPort{}, err
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(h))
		return netip.AddrPortFrom(netip.AddrFrom4(b), uint16(p)), nil
	}
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		local, err := hexAddr(fields[1])
		if err != nil {
			return nil, nil, err
		}
		remote, err := hexAddr(fields[2])
		if err != nil {
			return nil, nil, err
		}
		ports = append(ports, local.Port())
		if remote == peer {
			connected = append(connected, local.Port())
		}
	}
	return ports, connected, sc.Err()
}

// forge sends, from a raw socket, an answer for name (A 6.6.6.6, TTL 3600)
// as if from src to dst with every message ID, and returns how many it sent.
func forge(src, dst netip.AddrPort, name string) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("opening a raw socket: %w", err)
	}
	defer syscall.Close(fd)
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response, m.RecursionAvailable = true, true
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(6, 6, 6, 6)}}
	payload, err := m.Pack()
	if err != nil {
		return 0, err
	}
	pkt := make([]byte, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:], s4[:])
	copy(pkt[16:], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	// UDP checksum 0: none, which IPv4 allows.
	copy(pkt[28:], payload)
	to := &syscall.SockaddrInet4{Addr: d4}
	sent := 0
	for id := range 1 << 16 {
		binary.BigEndian.PutUint16(pkt[28:], uint16(id))
		for {
			err := syscall.Sendto(fd, pkt, 0, to)
			if err == nil {
				break
			}
			if !errors.Is(err, syscall.ENOBUFS) && !errors.Is(err, syscall.EAGAIN) {
				return sent, fmt.Errorf("sending a forged answer: %w", err)
			}
			time.Sleep(time.Millisecond)
		}
		sent++
	}
	return sent, nil
}
