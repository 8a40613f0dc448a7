package conntrack_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// lab is a small routed network, all in throwaway namespaces:
//
//	client ──veth── node ──veth── srv1
//	                 ├────veth── srv2
//	                 └────veth── sink (the node's default gateway; forwards nothing)
//
// "node" is where the DNAT rules (written by hand per test) and the
// conntrack table under test live; srv1/srv2 run real UDP (and TCP)
// servers that answer with their own name.
type lab struct {
	t                        *testing.T
	fam                      model.Family
	client, node, srv1, srv2 *netns.NS
	sink                     *netns.NS
	clientIP                 netip.Addr
	srv1IP, srv2IP           netip.Addr
	ipt                      string // iptables-legacy or ip6tables-legacy
}

func newLab(t *testing.T, fam model.Family) *lab {
	t.Helper()
	netns.RequireRoot(t)
	ipt := "iptables-legacy"
	if fam == model.IPv6 {
		ipt = "ip6tables-legacy"
	}
	netns.RequireTool(t, ipt)
	l := &lab{t: t, fam: fam, ipt: ipt}
	l.client = netns.New(t, "ct-client")
	l.node = netns.New(t, "ct-node")
	l.srv1 = netns.New(t, "ct-srv1")
	l.srv2 = netns.New(t, "ct-srv2")
	l.sink = netns.New(t, "ct-sink")
	if fam == model.IPv6 {
		// Without this, a link-local address is tentative for a second
		// after the link comes up, and neighbour solicitations sent in
		// that window are lost: the first datagram would vanish.
		for _, n := range []*netns.NS{l.client, l.node, l.srv1, l.srv2, l.sink} {
			n.MustExec("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
		}
	}
	netns.Veth(t, l.client, "eth0", l.node, "c0")
	netns.Veth(t, l.srv1, "eth0", l.node, "s1")
	netns.Veth(t, l.srv2, "eth0", l.node, "s2")
	netns.Veth(t, l.sink, "eth0", l.node, "gw")

	addr := func(n *netns.NS, dev, cidr string) {
		args := []string{"ip", "addr", "add", cidr, "dev", dev}
		if fam == model.IPv6 {
			args = append(args, "nodad")
		}
		n.MustExec(args...)
	}
	route := func(n *netns.NS, via string) {
		n.MustExec("ip", "route", "add", "default", "via", via)
	}
	if fam == model.IPv4 {
		l.clientIP, l.srv1IP, l.srv2IP = ip("198.51.100.2"), ip("198.18.1.2"), ip("198.18.2.2")
		addr(l.client, "eth0", "198.51.100.2/24")
		addr(l.node, "c0", "198.51.100.1/24")
		addr(l.srv1, "eth0", "198.18.1.2/24")
		addr(l.node, "s1", "198.18.1.1/24")
		addr(l.srv2, "eth0", "198.18.2.2/24")
		addr(l.node, "s2", "198.18.2.1/24")
		addr(l.sink, "eth0", "192.0.2.2/24")
		addr(l.node, "gw", "192.0.2.1/24")
		route(l.client, "198.51.100.1")
		route(l.srv1, "198.18.1.1")
		route(l.srv2, "198.18.2.1")
		route(l.node, "192.0.2.2")
		l.node.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
	} else {
		// Clients of an IPv6 Service come from the node range here (the
		// address plan has no IPv6 external-client range).
		l.clientIP, l.srv1IP, l.srv2IP = ip("2001:db8:1::100"), ip("2001:db8:10:1::2"), ip("2001:db8:10:2::2")
		addr(l.client, "eth0", "2001:db8:1::100/64")
		addr(l.node, "c0", "2001:db8:1::1/64")
		addr(l.srv1, "eth0", "2001:db8:10:1::2/64")
		addr(l.node, "s1", "2001:db8:10:1::1/64")
		addr(l.srv2, "eth0", "2001:db8:10:2::2/64")
		addr(l.node, "s2", "2001:db8:10:2::1/64")
		addr(l.sink, "eth0", "2001:db8:1:1::2/64")
		addr(l.node, "gw", "2001:db8:1:1::1/64")
		route(l.client, "2001:db8:1::1")
		route(l.srv1, "2001:db8:10:1::1")
		route(l.srv2, "2001:db8:10:2::1")
		route(l.node, "2001:db8:1:1::2")
		l.node.MustExec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	}
	return l
}

// iptables runs the family's legacy iptables in the node namespace.
func (l *lab) iptables(args ...string) {
	l.t.Helper()
	l.node.MustExec(append([]string{l.ipt, "-w"}, args...)...)
}

// netlink opens the conntrack socket INSIDE the node namespace; it stays
// bound there whatever thread uses it later.
func (l *lab) netlink() *conntrack.Netlink {
	l.t.Helper()
	var ct *conntrack.Netlink
	if err := l.node.Do(func() error {
		var err error
		ct, err = conntrack.NewNetlink(conntrack.NetlinkConfig{})
		return err
	}); err != nil {
		l.t.Fatalf("NewNetlink in %s: %v", l.node.Name, err)
	}
	l.t.Cleanup(func() { ct.Close() })
	return ct
}

// udpServer answers every datagram with its name and reports who asked.
type udpServer struct {
	name string
	conn net.PacketConn
	got  chan netip.AddrPort
}

func (l *lab) udpServer(n *netns.NS, name string, port int) *udpServer {
	l.t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		l.t.Fatalf("listen udp in %s: %v", n.Name, err)
	}
	s := &udpServer{name: name, conn: pc, got: make(chan netip.AddrPort, 100)}
	l.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fa := from.(*net.UDPAddr).AddrPort()
			s.got <- netip.AddrPortFrom(fa.Addr().Unmap(), fa.Port())
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	return s
}

// tcpServer accepts connections and keeps them open.
func (l *lab) tcpServer(n *netns.NS, port int) {
	l.t.Helper()
	var ln net.Listener
	if err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		l.t.Fatalf("listen tcp in %s: %v", n.Name, err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	l.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
}

// udpClient is a client socket with a fixed source port: the point of the
// exercise is that the NEXT datagram from the SAME port is re-NATed.
type udpClient struct {
	t    *testing.T
	conn *net.UDPConn
}

func (l *lab) udpClient(port int) *udpClient {
	l.t.Helper()
	var c *net.UDPConn
	if err := l.client.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.clientIP, uint16(port))))
		return err
	}); err != nil {
		l.t.Fatalf("client socket: %v", err)
	}
	l.t.Cleanup(func() { c.Close() })
	return &udpClient{t: l.t, conn: c}
}

// ask sends one datagram to dst and returns the answering server's name,
// or "" if no answer arrives within wait.
func (c *udpClient) ask(dst netip.AddrPort, wait time.Duration) string {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort([]byte("q"), dst); err != nil {
		c.t.Fatalf("send to %s: %v", dst, err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	n, _, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		c.t.Fatalf("read: %v", err)
	}
	return string(buf[:n])
}

// tcpConnect opens a TCP connection from the client namespace and keeps it.
func (l *lab) tcpConnect(dst netip.AddrPort) {
	l.t.Helper()
	var c net.Conn
	if err := l.client.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
		return err
	}); err != nil {
		l.t.Fatalf("tcp connect %s: %v", dst, err)
	}
	l.t.Cleanup(func() { c.Close() })
}

// find returns the flows in the node's table with the given protocol and
// original destination (and source port if non-zero).
func find(t *testing.T, ct conntrack.Interface, fam model.Family, proto uint8, dst netip.AddrPort, sport uint16) []conntrack.Flow {
	t.Helper()
	flows, err := ct.List(fam, conntrack.Filter{Protocol: proto, OrigDst: dst.Addr(), OrigDstPort: dst.Port(), OrigSrcPort: sport})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return flows
}

// nsID identifies a network namespace.
type nsID struct{ dev, ino uint64 }

func threadNetNS() (nsID, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// hostNetNS is the namespace of the test process outside netns.Do.
func hostNetNS(t *testing.T) nsID {
	t.Helper()
	id, err := threadNetNS()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// requireNotNS guards the house rule for tests that write sysctls: the
// current thread must not be in the host's namespace.
func requireNotNS(host nsID) error {
	cur, err := threadNetNS()
	if err != nil {
		return err
	}
	if cur == host {
		return errors.New("refusing: this thread is in the host's network namespace")
	}
	return nil
}
