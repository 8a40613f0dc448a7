package echo

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

func TestListenNeedsAListener(t *testing.T) {
	if _, err := Listen(ServerConfig{Name: "x"}); err == nil {
		t.Fatal("Listen with no addresses: want error")
	}
}

func TestQueryUnknownProtocol(t *testing.T) {
	if _, err := Query(context.Background(), nil, "sctp", "192.0.2.1:1"); err == nil {
		t.Fatal("Query over sctp: want error")
	}
}

// nsDialer dials from inside a namespace (as the framework's NetNS does).
type nsDialer string

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.WithNetNSPath(string(d), func(ns.NetNS) error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// newNetNS makes a fresh network namespace (removed after the test) and
// returns its path, so test traffic never touches the root namespace.
func newNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace")
	}
	// Named like the framework's namespaces so its stale sweeper removes a
	// crashed run's leftover.
	name := fmt.Sprintf("kpre2e-%d-echotest", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return "/run/netns/" + name
}

func TestServeAndQuery(t *testing.T) {
	path := newNetNS(t)
	var srv *Server
	// Listening sockets belong to the namespace they were created in; Serve
	// may then run on any thread.
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		srv, err = Listen(ServerConfig{Name: "pod-a", TCP: "127.0.0.1:0", UDP: "127.0.0.1:0", HTTP: "127.0.0.1:0"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for _, tc := range []struct{ proto, addr string }{
		{"tcp", srv.tcp.Addr().String()},
		{"udp", srv.udp.LocalAddr().String()},
		{"http", srv.http.Addr().String()},
	} {
		qctx, qcancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := Query(qctx, nsDialer(path), tc.proto, tc.addr)
		qcancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.proto, err)
		}
		if r.Pod != "pod-a" || r.Proto != tc.proto || r.ClientIP() != "127.0.0.1" || r.Local != tc.addr {
			t.Fatalf("%s: got %+v", tc.proto, r)
		}
	}
}
