package conntrack_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
)

const (
	answer  = 2 * time.Second        // generous: a reply is expected
	silence = 300 * time.Millisecond // no reply is expected (black-holed)
)

func realCleaner(t *testing.T, fam model.Family, ct conntrack.Interface) *conntrack.Cleaner {
	t.Helper()
	c, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: fam, Conntrack: ct, Logger: zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An endpoint goes away: the DNAT rule is rewritten to a new server, as a
// sync would. Until the cleaner runs the client's next datagram (same
// source port) still reaches the old server — the bug this package exists
// for — and after it runs, the new one.
func TestKernelEndpointRemoved(t *testing.T) {
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		t.Run(fam.String(), func(t *testing.T) { testKernelEndpointRemoved(t, fam) })
	}
}

func testKernelEndpointRemoved(t *testing.T, fam model.Family) {
	l := newLab(t, fam)
	vip := ip("198.19.192.53")
	if fam == model.IPv6 {
		vip = ip("2001:db8:20::53")
	}
	frontend := netip.AddrPortFrom(vip, 53)
	ep1 := netip.AddrPortFrom(l.srv1IP, 5353)
	ep2 := netip.AddrPortFrom(l.srv2IP, 5353)
	control := netip.AddrPortFrom(l.srv2IP, 7777) // not a Service: a pod reached directly

	l.udpServer(l.srv1, "srv1", 5353)
	l.udpServer(l.srv2, "srv2", 5353)
	l.udpServer(l.srv2, "control", 7777)
	l.tcpServer(l.srv1, 5353)

	// rule appends (or, with replace, rewrites rule 1 of) the DNAT
	// for the frontend, like a sync would.
	rule := func(replace bool, proto string, to netip.AddrPort) {
		args := []string{"-t", "nat", "-A", "PREROUTING"}
		if replace {
			args = []string{"-t", "nat", "-R", "PREROUTING", "1"}
		}
		l.iptables(append(args, "-d", vip.String(), "-p", proto, "--dport", "53",
			"-j", "DNAT", "--to-destination", to.String())...)
	}
	rule(false, "udp", ep1)
	rule(false, "tcp", ep1)

	ct := l.netlink()

	dns := l.udpClient(40053)
	other := l.udpClient(40054)
	if got := dns.ask(frontend, answer); got != "srv1" {
		t.Fatalf("first query answered by %q, want srv1", got)
	}
	if got := other.ask(control, answer); got != "control" {
		t.Fatalf("control query answered by %q", got)
	}
	l.tcpConnect(frontend)

	// The dump is narrowed to UDP in the kernel: the TCP connection to the
	// same frontend is not in it, but is in a protocol-free dump.
	udpFlows := find(t, ct, fam, udp, frontend, 40053)
	if len(udpFlows) != 1 || udpFlows[0].Reply.SrcAddrPort() != ep1 {
		t.Fatalf("UDP flows to %s: %v, want one DNATed to %s", frontend, udpFlows, ep1)
	}
	if tcpFlows := find(t, ct, fam, tcp, frontend, 0); len(tcpFlows) != 1 {
		t.Fatalf("TCP flows: %v", tcpFlows)
	}
	all, err := ct.List(fam, conntrack.Filter{Protocol: udp})
	if err != nil {
		t.Fatal(err)
	}
	for _, fl := range all {
		if fl.Protocol != udp || fl.Family != fam {
			t.Fatalf("UDP dump returned %s", fl.String())
		}
	}

	// The endpoint goes away: the sync rewrites the rule to srv2.
	rule(true, "udp", ep2)
	if got := dns.ask(frontend, answer); got != "srv1" {
		t.Fatalf("before cleanup the entry should still send the client to srv1 (stale), got %q", got)
	}

	svc := svcPort("dns", model.UDP, vip.String(), 53)
	svcTCP := svcPort("dns", model.TCP, vip.String(), 53)
	prev := snap(fam, entry{svc, []*model.Endpoint{{IP: ep1.Addr(), Port: 5353, Ready: true, Serving: true}}},
		entry{svcTCP, []*model.Endpoint{{IP: ep1.Addr(), Port: 5353, Ready: true, Serving: true}}})
	cur := snap(fam, entry{svc, []*model.Endpoint{{IP: ep2.Addr(), Port: 5353, Ready: true, Serving: true}}},
		entry{svcTCP, []*model.Endpoint{{IP: ep2.Addr(), Port: 5353, Ready: true, Serving: true}}})
	cl := realCleaner(t, fam, ct)
	if _, err := cl.Cleanup(nil, prev, node); err != nil { // the previous sync's pass
		t.Fatal(err)
	}
	res, err := cl.Cleanup(prev, cur, node)
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if res.Deleted != 1 {
		t.Fatalf("Cleanup deleted %d entries (%+v), want 1", res.Deleted, res)
	}
	if fl := find(t, ct, fam, udp, frontend, 40053); len(fl) != 0 {
		t.Fatalf("stale entry survived: %v", fl)
	}
	if fl := find(t, ct, fam, udp, control, 40054); len(fl) != 1 {
		t.Fatalf("control flow to %s was touched: %v", control, fl)
	}
	if fl := find(t, ct, fam, tcp, frontend, 0); len(fl) != 1 {
		t.Fatalf("TCP flow was touched: %v", fl)
	}

	if got := dns.ask(frontend, answer); got != "srv2" {
		t.Fatalf("after cleanup the same client port reached %q, want srv2", got)
	}
	if got := other.ask(control, answer); got != "control" {
		t.Fatalf("control flow broken: %q", got)
	}
}

// The Service has no endpoint yet: the first datagram is routed to the
// node's gateway (which drops it) and leaves an un-NATed entry. When the
// endpoint appears and the DNAT rule is installed, that entry keeps the
// client's port black-holed until the cleaner removes it.
func TestKernelZeroToOneEndpoint(t *testing.T) {
	l := newLab(t, model.IPv4)
	vip := ip("198.19.192.54")
	frontend := netip.AddrPortFrom(vip, 53)
	ep := netip.AddrPortFrom(l.srv1IP, 5353)
	srv := l.udpServer(l.srv1, "srv1", 5353)
	// A real node always has DNAT rules (for other Services); a rule that
	// needs conntrack is what turns tracking on in a namespace, an empty
	// nat table is not enough.
	l.iptables("-t", "nat", "-N", "KPR-SERVICES")
	l.iptables("-t", "nat", "-A", "PREROUTING", "-j", "KPR-SERVICES")
	l.iptables("-t", "nat", "-A", "KPR-SERVICES", "-d", "198.19.192.99", "-p", "udp", "--dport", "53",
		"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:5353", l.srv2IP))
	ct := l.netlink()

	client := l.udpClient(40055)
	if got := client.ask(frontend, silence); got != "" {
		t.Fatalf("no endpoint yet, but %q answered", got)
	}
	fl := find(t, ct, model.IPv4, udp, frontend, 40055)
	if len(fl) != 1 || fl[0].Reply.SrcAddrPort() != frontend {
		t.Fatalf("want one un-NATed entry to %s, got %v", frontend, fl)
	}

	l.iptables("-t", "nat", "-A", "KPR-SERVICES", "-d", vip.String(), "-p", "udp", "--dport", "53",
		"-j", "DNAT", "--to-destination", ep.String())
	if got := client.ask(frontend, silence); got != "" {
		t.Fatalf("the stale entry should still black-hole the client, but %q answered", got)
	}
	select {
	case from := <-srv.got:
		t.Fatalf("server got a datagram from %s before cleanup", from)
	default:
	}

	svc := svcPort("dns2", model.UDP, vip.String(), 53)
	prev := snap(model.IPv4, entry{svc, nil})
	cur := snap(model.IPv4, entry{svc, []*model.Endpoint{{IP: ep.Addr(), Port: ep.Port(), Ready: true, Serving: true}}})
	cl := realCleaner(t, model.IPv4, ct)
	if _, err := cl.Cleanup(nil, snap(model.IPv4), node); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Cleanup(prev, cur, node)
	if err != nil || res.Deleted != 1 {
		t.Fatalf("Cleanup: %+v %v, want 1 deleted", res, err)
	}
	if got := client.ask(frontend, answer); got != "srv1" {
		t.Fatalf("after cleanup the same client port got %q, want srv1", got)
	}
	if from := <-srv.got; from != netip.AddrPortFrom(l.clientIP, 40055) {
		t.Fatalf("server saw %s", from)
	}
}

// NodePort: traffic to the node's own address at the node port, DNATed
// like kube-proxy's KUBE-NODEPORTS would.
func TestKernelNodePort(t *testing.T) {
	l := newLab(t, model.IPv4)
	l.udpServer(l.srv1, "srv1", 5353)
	l.udpServer(l.srv2, "srv2", 5353)
	nodeAddr := netip.AddrPortFrom(ip("198.51.100.1"), 30053) // the node's address on the client side
	rule := func(op string, to netip.AddrPort) {
		args := []string{"-t", "nat", op, "PREROUTING"}
		if op == "-R" {
			args = append(args, "1")
		}
		l.iptables(append(args, "-p", "udp", "--dport", "30053", "-j", "DNAT", "--to-destination", to.String())...)
	}
	ep1, ep2 := netip.AddrPortFrom(l.srv1IP, 5353), netip.AddrPortFrom(l.srv2IP, 5353)
	rule("-A", ep1)
	ct := l.netlink()
	c := l.udpClient(40056)
	if got := c.ask(nodeAddr, answer); got != "srv1" {
		t.Fatalf("got %q", got)
	}
	rule("-R", ep2)

	svc := svcPort("np", model.UDP, "198.19.192.55", 53, withNodePort(30053))
	prev := snap(model.IPv4, entry{svc, []*model.Endpoint{{IP: ep1.Addr(), Port: 5353, Ready: true, Serving: true}}})
	cur := snap(model.IPv4, entry{svc, []*model.Endpoint{{IP: ep2.Addr(), Port: 5353, Ready: true, Serving: true}}})
	cl := realCleaner(t, model.IPv4, ct)
	if _, err := cl.Cleanup(nil, prev, node); err != nil {
		t.Fatal(err)
	}
	if res, err := cl.Cleanup(prev, cur, node); err != nil || res.Deleted != 1 {
		t.Fatalf("Cleanup: %+v %v", res, err)
	}
	if got := c.ask(nodeAddr, answer); got != "srv2" {
		t.Fatalf("after cleanup: %q, want srv2", got)
	}
}

// The reconciler must see only the node namespace's table: a socket opened
// in one namespace never reports another's entries.
func TestKernelSocketBoundToNamespace(t *testing.T) {
	l := newLab(t, model.IPv4)
	l.udpServer(l.srv1, "srv1", 5353)
	l.iptables("-t", "nat", "-A", "PREROUTING", "-d", "198.19.192.56", "-p", "udp", "--dport", "53",
		"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:5353", l.srv1IP))
	nodeCT := l.netlink()
	var srvCT *conntrack.Netlink
	if err := l.srv2.Do(func() error {
		var err error
		srvCT, err = conntrack.NewNetlink(conntrack.NetlinkConfig{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srvCT.Close()
	if got := l.udpClient(40057).ask(netip.MustParseAddrPort("198.19.192.56:53"), answer); got != "srv1" {
		t.Fatalf("got %q", got)
	}
	if n := len(find(t, nodeCT, model.IPv4, udp, netip.MustParseAddrPort("198.19.192.56:53"), 0)); n != 1 {
		t.Fatalf("node table has %d entries, want 1", n)
	}
	if n := len(find(t, srvCT, model.IPv4, udp, netip.MustParseAddrPort("198.19.192.56:53"), 0)); n != 0 {
		t.Fatalf("srv2's table has %d entries of the node's", n)
	}
}
