package ctcli

import (
	"bytes"
	"context"
	"flag"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	cttesting "github.com/kpr-proxy/kpr/internal/conntrack/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// fakeCT adds Close to the conntrack fake.
type fakeCT struct {
	*cttesting.Fake
	closed bool
}

func (f *fakeCT) Close() error { f.closed = true; return nil }

var _ Conntrack = (*fakeCT)(nil)

// nodeIP is the fixture node's address (node ports answer on it).
var nodeIP = netip.MustParseAddr("192.0.2.11")

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

const (
	replied  = conntrack.StatusConfirmed | conntrack.StatusSeenReply
	assured  = replied | conntrack.StatusAssured
	dnat     = conntrack.StatusDstNAT
	snatDNAT = conntrack.StatusSrcNAT | conntrack.StatusDstNAT
)

// flow builds a flow: client → frontend, answered by endpoint to replyDst.
func flow(proto uint8, client, frontend, endpoint, replyDst string, status uint32, timeout uint32, tcpState uint8) conntrack.Flow {
	c, f, e, r := ap(client), ap(frontend), ap(endpoint), ap(replyDst)
	return conntrack.Flow{
		Family: model.FamilyOf(c.Addr()), Protocol: proto,
		Orig:   conntrack.Tuple{Src: c.Addr(), Dst: f.Addr(), SrcPort: c.Port(), DstPort: f.Port()},
		Reply:  conntrack.Tuple{Src: e.Addr(), Dst: r.Addr(), SrcPort: e.Port(), DstPort: r.Port()},
		Status: status, Timeout: timeout, TCPState: tcpState,
	}
}

const (
	tcp = conntrack.ProtoTCP
	udp = conntrack.ProtoUDP
)

// TCP states (conntrack numbering).
const (
	synSent     = 1
	established = 3
	timeWait    = 7
)

// fixtureFlows is the fixed conntrack table the golden files show, against
// testdata/snapshot.json. Ids are assigned in this order by the fake.
func fixtureFlows() []conntrack.Flow {
	return []conntrack.Flow{
		// DNS to a ready local CoreDNS pod: fine.
		flow(udp, "198.18.1.20:40001", "198.19.192.10:53", "198.18.1.5:53", "198.18.1.20:40001", replied|dnat, 28, 0),
		// DNS stuck on a terminating pod that no longer serves.
		flow(udp, "198.18.1.21:40002", "198.19.192.10:53", "198.18.2.7:53", "198.18.1.21:40002", assured|dnat, 118, 0),
		// DNS stuck on an address that is no endpoint any more.
		flow(udp, "198.18.1.22:40003", "198.19.192.10:53", "198.18.3.9:53", "198.18.1.22:40003", replied|dnat, 25, 0),
		// DNS query sent before kube-dns had endpoints: never NATed.
		flow(udp, "198.18.1.23:40004", "198.19.192.10:53", "198.19.192.10:53", "198.18.1.23:40004", conntrack.StatusConfirmed, 30, 0),
		// TCP to the web Service's cluster IP.
		flow(tcp, "198.18.1.20:51000", "198.19.192.20:80", "198.18.2.3:8080", "198.18.1.20:51000", assured|dnat, 431999, established),
		// TCP from outside to the web node port (masqueraded).
		flow(tcp, "198.51.100.10:52000", "192.0.2.11:30080", "198.18.1.9:8080", "192.0.2.11:52000", assured|snatDNAT, 95, timeWait),
		// TCP from outside to the web external IP, not answered yet.
		flow(tcp, "198.51.100.11:52001", "203.0.113.10:80", "198.18.1.9:8080", "198.51.100.11:52001", conntrack.StatusConfirmed|dnat, 110, synSent),
		// UDP from outside to the game load-balancer IP.
		flow(udp, "198.51.100.12:6000", "203.0.113.20:7777", "198.18.2.4:7777", "198.51.100.12:6000", assured|dnat, 170, 0),
		// UDP from outside to the game node port (masqueraded).
		flow(udp, "198.51.100.13:6001", "192.0.2.11:30777", "198.18.2.4:7777", "192.0.2.11:6001", replied|snatDNAT, 25, 0),
		// syslog has no endpoints.
		flow(udp, "198.18.1.20:41000", "198.19.192.30:514", "198.19.192.30:514", "198.18.1.20:41000", conntrack.StatusConfirmed, 29, 0),
		// Not ours: pod to pod, and the node's NTP.
		flow(tcp, "198.18.1.20:33000", "198.18.2.3:8080", "198.18.2.3:8080", "198.18.1.20:33000", assured, 431000, established),
		flow(udp, "192.0.2.11:123", "198.51.100.50:123", "198.51.100.50:123", "192.0.2.11:123", replied, 20, 0),
		// Not ours: a node port number on an address that is not the node's.
		flow(udp, "198.51.100.14:6003", "198.51.100.60:30777", "198.51.100.60:30777", "198.51.100.14:6003", conntrack.StatusConfirmed, 30, 0),
		// IPv6 DNS: one fine, one stuck on the terminating pod.
		flow(udp, "[2001:db8:10:1::20]:40010", "[2001:db8:20::a]:53", "[2001:db8:10:1::5]:53", "[2001:db8:10:1::20]:40010", replied|dnat, 27, 0),
		flow(udp, "[2001:db8:10:1::21]:40011", "[2001:db8:20::a]:53", "[2001:db8:10:2::7]:53", "[2001:db8:10:1::21]:40011", replied|dnat, 20, 0),
	}
}

// env is one CLI run's world: the fake table, a proxy serving a snapshot.
type env struct {
	t     *testing.T
	ct    *fakeCT
	proxy *httptest.Server
	// snapshot is what the proxy serves (testdata/snapshot.json by default).
	mu       sync.Mutex
	snapshot []byte
	status   int
	openErr  error
	cfg      Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	snap, err := os.ReadFile(filepath.Join("testdata", "snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ct: &fakeCT{Fake: cttesting.NewFake()}, snapshot: snap, status: http.StatusOK}
	e.ct.Add(fixtureFlows()...)
	e.proxy = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != snapshotPath {
			http.NotFound(w, r)
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		w.WriteHeader(e.status)
		_, _ = w.Write(e.snapshot)
	}))
	t.Cleanup(e.proxy.Close)
	e.cfg = Config{
		OpenConntrack: func() (Conntrack, error) {
			if e.openErr != nil {
				return nil, e.openErr
			}
			return e.ct, nil
		},
		LocalAddrs: func() ([]netip.Addr, error) { return []netip.Addr{nodeIP, netip.MustParseAddr("127.0.0.1")}, nil },
		KubeClient: func(string) (kubernetes.Interface, string, error) { return nil, "", errNoKubeconfig },
		Hostname:   func() (string, error) { return "node1", nil },
	}
	return e
}

// run runs the CLI with --source proxy --proxy-url <fake proxy> appended.
func (e *env) run(args ...string) (stdout, stderr string, code int) {
	return e.runCtx(context.Background(), append(args, "--source", "proxy", "--proxy-url", e.proxy.URL)...)
}

// runRaw runs the CLI with args as given.
func (e *env) runCtx(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	cfg := e.cfg
	cfg.Stdout, cfg.Stderr = &out, &errb
	code = New(cfg).Run(ctx, args)
	return out.String(), errb.String(), code
}

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s (run go test -update if the change is intended)\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}
