package ctcli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// kernelLab is the smallest real setup the CLI is for, all in throwaway
// namespaces:
//
//	client 198.51.100.10 ──veth── node ──veth── server 198.18.1.2 (UDP :5353)
//
// The node has a hand-written iptables-legacy rule DNATing the "kube-dns"
// Service IP 198.19.192.53:53 to the server, and the conntrack table the
// CLI reads; a fake proxy debug endpoint (httptest) serves the snapshot.
type kernelLab struct {
	t                    *testing.T
	client, node, server *netns.NS

	mu       sync.Mutex
	snapshot app.SnapshotView
	proxy    *httptest.Server
}

var (
	kServiceIP = netip.MustParseAddrPort("198.19.192.53:53")
	kServer    = netip.MustParseAddrPort("198.18.1.2:5353")
	kClientIP  = netip.MustParseAddr("198.51.100.10")
)

func newKernelLab(t *testing.T) *kernelLab {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping kernel test in -short mode")
	}
	netns.RequireRoot(t)
	netns.RequireTool(t, "iptables-legacy")
	l := &kernelLab{t: t}
	l.client = netns.New(t, "ctcli-client")
	l.node = netns.New(t, "ctcli-node")
	l.server = netns.New(t, "ctcli-srv")
	netns.Veth(t, l.client, "eth0", l.node, "c0")
	netns.Veth(t, l.server, "eth0", l.node, "s0")
	l.client.MustExec("ip", "addr", "add", "198.51.100.10/24", "dev", "eth0")
	l.node.MustExec("ip", "addr", "add", "198.51.100.1/24", "dev", "c0")
	l.server.MustExec("ip", "addr", "add", "198.18.1.2/24", "dev", "eth0")
	l.node.MustExec("ip", "addr", "add", "198.18.1.1/24", "dev", "s0")
	l.client.MustExec("ip", "route", "add", "default", "via", "198.51.100.1")
	l.server.MustExec("ip", "route", "add", "default", "via", "198.18.1.1")
	l.node.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.node.MustExec("iptables-legacy", "-w", "-t", "nat", "-A", "PREROUTING", "-d", kServiceIP.Addr().String(), "-p", "udp",
		"--dport", "53", "-j", "DNAT", "--to-destination", kServer.String())
	l.udpEcho()

	l.snapshot = app.SnapshotView{Node: "node1", Services: []app.ServiceView{{
		Namespace: "kube-system", Name: "kube-dns", Port: "dns", Protocol: "UDP", Family: "IPv4",
		ClusterIP: kServiceIP.Addr().String(), ServicePort: kServiceIP.Port(),
		Endpoints: []app.EndpointView{{IP: kServer.Addr().String(), Port: kServer.Port(), Ready: true, Serving: true, Pod: "coredns-kernel", Node: "node2"}},
	}}}
	l.proxy = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		defer l.mu.Unlock()
		_ = json.NewEncoder(w).Encode(l.snapshot)
	}))
	t.Cleanup(l.proxy.Close)
	return l
}

func (l *kernelLab) udpEcho() {
	var pc net.PacketConn
	if err := l.server.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":5353")
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// query sends one datagram to the Service from the given client port and
// waits for the answer (the deadline only bounds a lost packet).
func (l *kernelLab) query(port uint16) {
	l.t.Helper()
	var c *net.UDPConn
	if err := l.client.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(kClientIP, port)))
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("q"), kServiceIP); err != nil {
		l.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadFromUDPAddrPort(make([]byte, 16)); err != nil {
		l.t.Fatalf("no answer through the Service IP: %v", err)
	}
}

// openCT opens ctnetlink INSIDE the node namespace; the socket stays bound
// there whichever thread uses it later.
func (l *kernelLab) openCT() (*conntrack.Netlink, error) {
	var ct *conntrack.Netlink
	err := l.node.Do(func() error {
		var err error
		ct, err = conntrack.NewNetlink(conntrack.NetlinkConfig{})
		return err
	})
	return ct, err
}

func (l *kernelLab) cfg(stdout, stderr io.Writer) Config {
	return Config{
		Stdout: stdout, Stderr: stderr,
		OpenConntrack: func() (Conntrack, error) { return l.openCT() },
		LocalAddrs: func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.18.1.1")}, nil
		},
	}
}

func (l *kernelLab) run(args ...string) (string, string) {
	l.t.Helper()
	var out, errb bytes.Buffer
	code := New(l.cfg(&out, &errb)).Run(context.Background(), append(args, "--source", "proxy", "--proxy-url", l.proxy.URL))
	if code != 0 {
		l.t.Fatalf("%v: exit %d: %s", args, code, errb.String())
	}
	return out.String(), errb.String()
}

// kernelFlows is the node's table for the client's port, read directly.
func (l *kernelLab) kernelFlows(port uint16) []conntrack.Flow {
	l.t.Helper()
	ct, err := l.openCT()
	if err != nil {
		l.t.Fatal(err)
	}
	defer ct.Close()
	flows, err := ct.List(model.IPv4, conntrack.Filter{Protocol: conntrack.ProtoUDP, OrigDst: kServiceIP.Addr(), OrigDstPort: kServiceIP.Port(), OrigSrcPort: port})
	if err != nil {
		l.t.Fatal(err)
	}
	return flows
}

// list, stale and flush against the real conntrack table: the DNATed DNS
// entry shows up annotated with the Service and pod, becomes stale when
// the pod stops being an endpoint, survives a dry run and is gone after
// flush.
func TestKernelListStaleFlush(t *testing.T) {
	l := newKernelLab(t)
	const port = 40053
	l.query(port)
	if n := len(l.kernelFlows(port)); n != 1 {
		t.Fatalf("%d kernel entries after the query, want 1", n)
	}

	out, _ := l.run("list", "-o", "json")
	var doc JSONDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var found *JSONRow
	for i := range doc.Entries {
		if doc.Entries[i].Client == netip.AddrPortFrom(kClientIP, port).String() {
			found = &doc.Entries[i]
		}
	}
	if found == nil {
		t.Fatalf("entry of client port %d not listed:\n%s", port, out)
	}
	if found.Service != "kube-system/kube-dns:dns" || found.Endpoint != kServer.String() || found.Pod != "coredns-kernel" ||
		found.Node != "node2" || found.EPState != EPReady || found.Via != ViaClusterIP || found.Protocol != "udp" ||
		!found.DNATed || found.ID == 0 || found.Timeout == 0 || strings.Join(found.State, ",") != "REPLIED" {
		t.Errorf("entry annotated wrongly: %+v", *found)
	}
	table, _ := l.run("list", "--service", "kube-system/kube-dns")
	if !strings.Contains(table, "kube-system/kube-dns:dns") || !strings.Contains(table, "coredns-kernel") {
		t.Errorf("table:\n%s", table)
	}

	// Nothing is stale while the pod is an endpoint.
	if out, errOut := l.run("stale"); out != "" || !strings.Contains(errOut, "no stale conntrack entries") {
		t.Errorf("stale with a serving endpoint: %q %q", out, errOut)
	}
	// The pod is replaced: its entry is now stale, with the reason.
	l.mu.Lock()
	l.snapshot.Services[0].Endpoints = []app.EndpointView{{IP: "198.18.1.3", Port: 5353, Ready: true, Serving: true, Pod: "coredns-new", Node: "node2"}}
	l.mu.Unlock()
	out, _ = l.run("stale", "--service", "kube-system/kube-dns")
	if !strings.Contains(out, "endpoint 198.18.1.2:5353 is no longer an endpoint") || !strings.Contains(out, "198.51.100.10:40053") {
		t.Errorf("stale after the endpoint moved:\n%s", out)
	}

	out, _ = l.run("flush", "--service", "kube-system/kube-dns", "--dry-run")
	if !strings.Contains(out, "dry run: would delete 1 conntrack entry of Service kube-system/kube-dns; nothing was deleted") {
		t.Errorf("dry run:\n%s", out)
	}
	if n := len(l.kernelFlows(port)); n != 1 {
		t.Fatalf("dry run changed the table: %d entries", n)
	}

	out, _ = l.run("flush", "--service", "kube-system/kube-dns")
	if !strings.Contains(out, "deleted 1 conntrack entry of Service kube-system/kube-dns\n") {
		t.Errorf("flush:\n%s", out)
	}
	if n := len(l.kernelFlows(port)); n != 0 {
		t.Errorf("%d entries left after flush", n)
	}
	if out, _ := l.run("list", "--service", "kube-system/kube-dns"); out != "" {
		t.Errorf("list after flush:\n%s", out)
	}
}

// watch over real ctnetlink events: a new DNS flow is printed annotated.
func TestKernelWatch(t *testing.T) {
	l := newKernelLab(t)
	out, errOut := &lockedBuffer{}, &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- New(l.cfg(out, errOut)).Run(ctx, []string{"watch", "--source", "proxy", "--proxy-url", l.proxy.URL})
	}()
	// The subscription is joined asynchronously; keep making new flows
	// (fresh source ports) until one is reported.
	deadline := time.Now().Add(30 * time.Second)
	var port uint16 = 41000
	for !strings.Contains(out.String(), "NEW") {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("watch exited with %d: %s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no NEW event printed; stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
		l.query(port)
		port++
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
	var line string
	for _, ln := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(ln, "NEW") {
			line = ln
			break
		}
	}
	f := strings.Fields(line)
	if len(f) < 8 || f[1] != "kube-system/kube-dns:dns" || f[2] != "udp" || !strings.HasPrefix(f[3], "198.51.100.10:") ||
		f[4] != kServiceIP.String() || f[5] != kServer.String() || f[6] != "coredns-kernel" || f[7] != "node2" {
		t.Errorf("event line %q", line)
	}
}

// Without CAP_NET_ADMIN the kernel answers EPERM, and the CLI turns that
// into advice. The test plays an unprivileged process by running every
// netlink call on one OS thread that dropped all capabilities (Linux
// capabilities are per thread, and the kernel checks the caller's). That
// thread never changes namespace (the socket is opened in the node's by
// fd), so even if it is the main thread, which the runtime parks rather
// than ends, nothing of it is left inside the test's namespaces; and it is
// never unlocked, so no other goroutine runs on it.
func TestKernelPermissionDenied(t *testing.T) {
	l := newKernelLab(t)
	nsFile, err := os.Open(l.node.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer nsFile.Close()
	jobs := make(chan func())
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for job := range jobs {
			job()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	defer close(jobs)
	onThread := func(fn func()) {
		done := make(chan struct{})
		jobs <- func() { fn(); close(done) }
		<-done
	}

	var out, errb bytes.Buffer
	cfg := l.cfg(&out, &errb)
	cfg.OpenConntrack = func() (Conntrack, error) {
		var ct *conntrack.Netlink
		var err error
		onThread(func() { ct, err = conntrack.NewNetlink(conntrack.NetlinkConfig{NetNS: int(nsFile.Fd())}) })
		if err != nil {
			return nil, err
		}
		return &threadCT{Netlink: ct, on: onThread}, nil
	}
	code := New(cfg).Run(context.Background(), []string{"list", "--source", "proxy", "--proxy-url", l.proxy.URL})
	if code != 1 {
		t.Errorf("exit %d, want 1; stdout %q", code, out.String())
	}
	if !strings.Contains(errb.String(), "permission denied by the kernel") || !strings.Contains(errb.String(), "needs root or CAP_NET_ADMIN") {
		t.Errorf("stderr: %s", errb.String())
	}
}

// threadCT runs List and Delete on the given thread.
type threadCT struct {
	*conntrack.Netlink
	on func(func())
}

func (c *threadCT) List(fam model.Family, f conntrack.Filter) (flows []conntrack.Flow, err error) {
	c.on(func() { flows, err = c.Netlink.List(fam, f) })
	return flows, err
}

func (c *threadCT) Delete(flows []conntrack.Flow) (n int, err error) {
	c.on(func() { n, err = c.Netlink.Delete(flows) })
	return n, err
}
