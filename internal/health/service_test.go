package health_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	"github.com/kpr-proxy/kpr/internal/health"
	fakelisten "github.com/kpr-proxy/kpr/internal/health/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

type fakeProxy struct{ unhealthy atomic.Bool }

func (p *fakeProxy) Healthy() bool { return !p.unhealthy.Load() }

var (
	svcA = types.NamespacedName{Namespace: "ns", Name: "a"}
	svcB = types.NamespacedName{Namespace: "ns", Name: "b"}
)

type svcFixture struct {
	fl       *fakelisten.FakeListener
	proxy    *fakeProxy
	logs     *observer.ObservedLogs
	recorder *events.FakeRecorder
	s        *health.ServiceHealthServer
	client   *http.Client
}

func newSvcFixture(t *testing.T, family model.Family, addrs ...netip.Addr) *svcFixture {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	f := &svcFixture{
		fl:       fakelisten.NewFakeListener(),
		proxy:    &fakeProxy{},
		logs:     logs,
		recorder: events.NewFakeRecorder(10),
	}
	s, err := health.NewServiceHealthServer(health.ServiceHealthConfig{
		NodeName:          "node-a",
		Family:            family,
		NodePortAddresses: addrs,
		Proxy:             f.proxy,
		Recorder:          f.recorder,
		Listener:          f.fl,
		Logger:            zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f.s = s
	f.client = fakeClient(f.fl)
	return f
}

// get probes addr ("host:port") like a load balancer would. The server
// goroutine may not have reached Accept yet; Dial blocks until it does.
func (f *svcFixture) get(t *testing.T, addr string) (int, string, http.Header) {
	t.Helper()
	resp, err := f.client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func wantBody(nsn types.NamespacedName, n int, healthy bool) string {
	return "{\n\t\"service\": {\n\t\t\"namespace\": \"" + nsn.Namespace + "\",\n\t\t\"name\": \"" + nsn.Name +
		"\"\n\t},\n\t\"localEndpoints\": " + strconv.Itoa(n) + ",\n\t\"serviceProxyHealthy\": " + strconv.FormatBool(healthy) + "\n}"
}

func TestServiceHealthAnswers(t *testing.T) {
	f := newSvcFixture(t, model.IPv4)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30001, svcB: 30002})
	if got := f.fl.Open(); !slices.Equal(got, []string{"0.0.0.0:30001", "0.0.0.0:30002"}) {
		t.Fatalf("open %v", got)
	}
	if got := f.fl.Calls(); !slices.Equal(got, []string{"tcp4 0.0.0.0:30001", "tcp4 0.0.0.0:30002"}) {
		t.Fatalf("calls %v", got)
	}

	// No endpoints yet: 503.
	code, body, hdr := f.get(t, "192.0.2.10:30001")
	if code != http.StatusServiceUnavailable || body != wantBody(svcA, 0, true) {
		t.Fatalf("no endpoints: %d %q", code, body)
	}
	if hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Content-Type-Options") != "nosniff" || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "0" {
		t.Fatalf("headers %v", hdr)
	}

	f.s.SyncEndpoints(map[types.NamespacedName]int{svcA: 2, {Namespace: "ns", Name: "unknown"}: 5})
	code, body, hdr = f.get(t, "192.0.2.10:30001")
	if code != http.StatusOK || body != wantBody(svcA, 2, true) || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "2" {
		t.Fatalf("2 endpoints: %d %q %v", code, body, hdr)
	}
	// svcB is missing from the map: 0 endpoints.
	if code, body, _ := f.get(t, "192.0.2.10:30002"); code != http.StatusServiceUnavailable || body != wantBody(svcB, 0, true) {
		t.Fatalf("svcB: %d %q", code, body)
	}

	// Endpoints but the proxy is unhealthy: 503.
	f.proxy.unhealthy.Store(true)
	if code, body, _ := f.get(t, "192.0.2.10:30001"); code != http.StatusServiceUnavailable || body != wantBody(svcA, 2, false) {
		t.Fatalf("unhealthy proxy: %d %q", code, body)
	}
	f.proxy.unhealthy.Store(false)

	// Endpoints going away.
	f.s.SyncEndpoints(nil)
	if code, _, _ := f.get(t, "192.0.2.10:30001"); code != http.StatusServiceUnavailable {
		t.Fatalf("after endpoints removed: %d", code)
	}
}

func TestServiceHealthBodyMatchesKubeProxy(t *testing.T) {
	// kube-proxy builds this body from a dedented, tab-indented template.
	want := `{
	"service": {
		"namespace": "kube-system",
		"name": "ingress"
	},
	"localEndpoints": 3,
	"serviceProxyHealthy": true
}`
	if got := health.ServiceHealthBody(types.NamespacedName{Namespace: "kube-system", Name: "ingress"}, 3, true); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestServiceHealthAddsRemovesAndMovesPorts(t *testing.T) {
	f := newSvcFixture(t, model.IPv4)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30001, svcB: 30002})
	f.s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1, svcB: 1})

	// svcB removed, svcA moves to another port.
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30011})
	if got := f.fl.Open(); !slices.Equal(got, []string{"0.0.0.0:30011"}) {
		t.Fatalf("open %v", got)
	}
	if got := f.s.Ports(); len(got) != 1 || got[svcA] != 30011 {
		t.Fatalf("ports %v", got)
	}
	if _, err := f.client.Get("http://192.0.2.10:30002/"); !errors.Is(err, fakelisten.ErrConnRefused) {
		t.Fatalf("closed port answered: %v", err)
	}
	// A re-opened listener starts with 0 endpoints until the next
	// SyncEndpoints, like kube-proxy.
	if code, body, _ := f.get(t, "192.0.2.10:30011"); code != http.StatusServiceUnavailable || body != wantBody(svcA, 0, true) {
		t.Fatalf("moved: %d %q", code, body)
	}

	// Unchanged set: nothing reopened.
	calls := len(f.fl.Calls())
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30011})
	if len(f.fl.Calls()) != calls {
		t.Fatalf("unchanged sync reopened listeners: %v", f.fl.Calls())
	}

	f.s.Close()
	if got := f.fl.Open(); len(got) != 0 {
		t.Fatalf("open after Close: %v", got)
	}
}

func TestServiceHealthNodePortAddresses(t *testing.T) {
	a1, a2 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	f := newSvcFixture(t, model.IPv4, a1, a2)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30001})
	f.s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})
	if got := f.fl.Open(); !slices.Equal(got, []string{"192.0.2.10:30001", "192.0.2.11:30001"}) {
		t.Fatalf("open %v", got)
	}
	for _, addr := range []string{"192.0.2.10:30001", "192.0.2.11:30001"} {
		if code, _, _ := f.get(t, addr); code != http.StatusOK {
			t.Fatalf("%s: %d", addr, code)
		}
	}
	if _, err := f.client.Get("http://192.0.2.12:30001/"); !errors.Is(err, fakelisten.ErrConnRefused) {
		t.Fatalf("unlisted address answered: %v", err)
	}
}

func TestServiceHealthIPv6(t *testing.T) {
	f := newSvcFixture(t, model.IPv6)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30001})
	if got := f.fl.Calls(); !slices.Equal(got, []string{"tcp6 [::]:30001"}) {
		t.Fatalf("calls %v", got)
	}
	if code, _, _ := f.get(t, "[2001:db8:1::10]:30001"); code != http.StatusServiceUnavailable {
		t.Fatalf("%d", code)
	}
}

func TestServiceHealthBindFailureIsRetried(t *testing.T) {
	a1, a2 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	f := newSvcFixture(t, model.IPv4, a1, a2)
	// The second address fails: the first must be closed again.
	f.fl.FailAddr("192.0.2.11:30001", syscall.EADDRINUSE)
	want := map[types.NamespacedName]uint16{svcA: 30001, svcB: 30002}
	f.s.SyncServices(want)

	if got := f.s.Ports(); len(got) != 1 || got[svcB] != 30002 {
		t.Fatalf("ports %v", got)
	}
	if got := f.fl.Open(); !slices.Equal(got, []string{"192.0.2.10:30002", "192.0.2.11:30002"}) {
		t.Fatalf("open %v", got)
	}
	entries := f.logs.FilterMessage("failed to open service health check, will retry on next sync").All()
	if len(entries) != 1 {
		t.Fatalf("log entries %v", f.logs.All())
	}
	ctx := entries[0].ContextMap()
	if ctx["service"] != "ns/a" || ctx["port"] != uint16(30001) || !strings.Contains(ctx["error"].(string), "address already in use") || ctx["node"] != "node-a" {
		t.Fatalf("log context %v", ctx)
	}
	select {
	case ev := <-f.recorder.Events:
		if !strings.Contains(ev, "Warning FailedToStartServiceHealthcheck") || !strings.Contains(ev, `"ns/a" on port 30001`) {
			t.Fatalf("event %q", ev)
		}
	default:
		t.Fatal("no event recorded")
	}

	// Still failing: retried, still absent, svcB untouched.
	f.s.SyncServices(want)
	if got := f.s.Ports(); len(got) != 1 {
		t.Fatalf("ports %v", got)
	}
	// The port becomes free: the next sync opens it.
	f.fl.FailAddr("192.0.2.11:30001", nil)
	f.s.SyncServices(want)
	if got := f.s.Ports(); len(got) != 2 || got[svcA] != 30001 {
		t.Fatalf("ports after retry %v", got)
	}
}

func TestServiceHealthDuplicatePort(t *testing.T) {
	// Bad input: two Services claim one port. The first (in name order)
	// gets it, the other is logged and retried; nothing crashes.
	f := newSvcFixture(t, model.IPv4)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 30001, svcB: 30001})
	if got := f.s.Ports(); len(got) != 1 || got[svcA] != 30001 {
		t.Fatalf("ports %v", got)
	}
	f.s.SyncServices(map[types.NamespacedName]uint16{svcB: 30001})
	if got := f.s.Ports(); len(got) != 1 || got[svcB] != 30001 {
		t.Fatalf("ports after svcA left %v", got)
	}
}

func TestServiceHealthZeroPortSkipped(t *testing.T) {
	f := newSvcFixture(t, model.IPv4)
	f.s.SyncServices(map[types.NamespacedName]uint16{svcA: 0})
	if len(f.s.Ports()) != 0 || len(f.fl.Calls()) != 0 {
		t.Fatalf("port 0 opened: %v", f.fl.Calls())
	}
	if f.logs.FilterMessage("service health check port is 0, skipping").FilterField(zap.String("service", "ns/a")).Len() != 1 {
		t.Fatalf("logs %v", f.logs.All())
	}
}

func TestNewServiceHealthServerValidates(t *testing.T) {
	p := &fakeProxy{}
	for name, cfg := range map[string]health.ServiceHealthConfig{
		"no proxy":       {Family: model.IPv4},
		"bad family":     {Family: 5, Proxy: p},
		"wrong family":   {Family: model.IPv4, Proxy: p, NodePortAddresses: []netip.Addr{netip.MustParseAddr("2001:db8:1::1")}},
		"invalid addr":   {Family: model.IPv6, Proxy: p, NodePortAddresses: []netip.Addr{{}}},
		"wrong family 6": {Family: model.IPv6, Proxy: p, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
	} {
		if _, err := health.NewServiceHealthServer(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestServiceHealthRealSocket binds a real listener on 127.0.0.1 (no kernel
// programming involved).
func TestServiceHealthRealSocket(t *testing.T) {
	// Find a free port, then give it back for the server to take.
	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(probe.Addr().(*net.TCPAddr).Port)
	probe.Close()

	proxy := &fakeProxy{}
	s, err := health.NewServiceHealthServer(health.ServiceHealthConfig{
		Family:            model.IPv4,
		NodePortAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Proxy:             proxy,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SyncServices(map[types.NamespacedName]uint16{svcA: port})
	if len(s.Ports()) != 1 {
		t.Skipf("port %d was taken by someone else in the meantime", port)
	}
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://127.0.0.1:" + strconv.Itoa(int(port)) + "/"
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != wantBody(svcA, 1, true) {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}

	s.SyncServices(nil)
	if _, err := client.Get(url); err == nil {
		t.Fatal("closed health check still answers")
	}
}
