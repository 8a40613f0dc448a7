package iptables

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// The real-kernel test: a node namespace running the proxier for real
// (iptables binaries, real netfilter), a "pod" namespace with TCP and UDP
// echo servers, and an "outside" client namespace.
//
//	client ns 198.51.100.10 ── node ns 198.51.100.1, 192.0.2.11 ── pod ns 198.18.1.2
//	                                          198.18.1.1
type topo struct {
	node, pod, client *netns.NS
}

func newTopo(t *testing.T) *topo {
	netns.RequireRoot(t)
	tp := &topo{node: netns.New(t, "kprk-node"), pod: netns.New(t, "kprk-pod"), client: netns.New(t, "kprk-cli")}
	netns.Veth(t, tp.node, "veth-pod", tp.pod, "eth0")
	netns.Veth(t, tp.node, "eth-out", tp.client, "eth0")
	for _, c := range [][]string{
		{"ip", "addr", "add", "198.18.1.1/24", "dev", "veth-pod"},
		{"ip", "addr", "add", "198.51.100.1/24", "dev", "eth-out"},
		{"ip", "addr", "add", "192.0.2.11/24", "dev", "eth-out"},
		// A node has a default route; without one a packet to a cluster
		// IP fails at routing before any rule sees it.
		{"ip", "route", "add", "default", "via", "198.51.100.10"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		tp.node.MustExec(c...)
	}
	tp.pod.MustExec("ip", "addr", "add", "198.18.1.2/24", "dev", "eth0")
	tp.pod.MustExec("ip", "route", "add", "default", "via", "198.18.1.1")
	tp.client.MustExec("ip", "addr", "add", "198.51.100.10/24", "dev", "eth0")
	tp.client.MustExec("ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
	return tp
}

// echo starts TCP and UDP servers on port inside ns that answer with the
// address they saw the client come from.
func echo(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	err := ns.Do(func() error {
		var err error
		if tl, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "from %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = ul.WriteTo([]byte("from "+from.String()+"\n"), from)
		}
	}()
}

// dial connects from inside ns and returns the echoed line.
func dial(ns *netns.NS, network, addr string) (string, error) {
	var out string
	err := ns.Do(func() error {
		c, err := net.DialTimeout(network, addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if network == "udp4" {
			if _, err := c.Write([]byte("hi")); err != nil {
				return err
			}
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		out = strings.TrimSpace(line)
		return err
	})
	return out, err
}

func TestKernelClusterIPAndNodePort(t *testing.T) {
	for _, backend := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
		t.Run(string(backend), func(t *testing.T) {
			netns.RequireRoot(t)
			netns.RequireTool(t, "iptables-"+string(backend)+"-restore")
			tp := newTopo(t)
			echo(t, tp.pod, 8080)

			var runner *ipt.Runner
			var err error
			runner, err = ipt.New(ipt.Config{Family: model.IPv4, Backend: backend, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			p, err := New(Config{
				Family: model.IPv4, IPT: runner, Logger: zaptest.NewLogger(t),
				MasqueradeBit: 14, DetectLocalMode: DetectLocalClusterCIDR,
				ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
				SyncPeriod:   time.Minute,
			})
			if err != nil {
				t.Fatal(err)
			}
			node := &model.Node{Name: "node1", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}}
			snap := modeltest.MustBuild(model.IPv4, "node1",
				"svc default/web TCP 198.19.192.10:80 nodePort=30080",
				"ep default/web 198.18.1.2:8080 ready local",
				"svc default/dns UDP 198.19.192.53:53",
				"ep default/dns 198.18.1.2:8080 ready local",
				"svc default/empty TCP 198.19.192.99:80",
			)
			// Sync on a thread inside the node namespace: the iptables
			// binaries inherit it. Nothing touches the root namespace.
			if err := tp.node.Do(func() error {
				_, err := p.Sync(context.Background(), snap, node)
				return err
			}); err != nil {
				t.Fatal(err)
			}

			got, err := dial(tp.node, "tcp4", "198.19.192.10:80")
			if err != nil || !strings.HasPrefix(got, "from ") {
				t.Fatalf("TCP to ClusterIP from the node: %q, %v", got, err)
			}
			got, err = dial(tp.node, "udp4", "198.19.192.53:53")
			if err != nil || !strings.HasPrefix(got, "from ") {
				t.Fatalf("UDP to ClusterIP from the node: %q, %v", got, err)
			}
			// NodePort from outside: Cluster policy masquerades, so the
			// pod sees the node's address, not the client's.
			got, err = dial(tp.client, "tcp4", "192.0.2.11:30080")
			if err != nil {
				t.Fatalf("TCP to NodePort from outside: %v", err)
			}
			if !strings.HasPrefix(got, "from 198.18.1.1:") {
				t.Errorf("NodePort traffic not masqueraded to the node: %q", got)
			}
			// No endpoints: rejected at once, not left to time out.
			start := time.Now()
			_, err = dial(tp.node, "tcp4", "198.19.192.99:80")
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("Service without endpoints: want connection refused, got %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("reject took %v", d)
			}

			// Cleanup removes everything, and the Service stops answering.
			if err := tp.node.Do(func() error { return Cleanup(context.Background(), runner, zaptest.NewLogger(t)) }); err != nil {
				t.Fatal(err)
			}
			save := tp.node.MustExec("iptables-"+string(backend)+"-save") + tp.node.MustExec("iptables-"+string(backend)+"-save", "-t", "mangle")
			if strings.Contains(save, "KPR-") {
				t.Errorf("cleanup left kpr rules:\n%s", save)
			}
		})
	}
}
