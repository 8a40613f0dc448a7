package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kpr-proxy/kpr/internal/health"
	fakelisten "github.com/kpr-proxy/kpr/internal/health/testing"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// deadlockGuard only stops a hung test; no assertion depends on it.
const deadlockGuard = 30 * time.Second

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// nodeHolder is a NodeGetter the test can change.
type nodeHolder struct{ node *v1.Node }

func (n *nodeHolder) Node() *v1.Node { return n.node }

func readyNode() *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
}

type proxyFixture struct {
	clk  *testingclock.FakeClock
	node *nodeHolder
	reg  *prometheus.Registry
	m    *metrics.Metrics
	hs   *health.ProxyHealthServer
	h    http.Handler
}

const timeout = 60 * time.Second

func newProxyFixture(t *testing.T) *proxyFixture {
	t.Helper()
	f := &proxyFixture{
		clk:  testingclock.NewFakeClock(t0),
		node: &nodeHolder{node: readyNode()},
		reg:  prometheus.NewRegistry(),
	}
	f.m = metrics.New(f.reg)
	hs, err := health.NewProxyHealthServer(health.ProxyHealthConfig{
		HealthTimeout: timeout,
		Node:          f.node,
		Metrics:       f.m,
		Clock:         f.clk,
		Logger:        zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.hs = hs
	f.h = hs.Handler()
	return f
}

// get returns the status code and the decoded body of path.
func (f *proxyFixture) get(t *testing.T, path string) (int, map[string]any, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	if v := rec.Header().Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q", path, v)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, body, rec.Body.String()
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func ts(t time.Time) string { return t.Format(time.RFC3339Nano) }

func TestProxyHealthStartsHealthy(t *testing.T) {
	f := newProxyFixture(t)
	f.clk.Step(5 * time.Second)

	code, _, raw := f.get(t, "/healthz")
	if code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	// Byte-exact: field names and order are kube-proxy's, no status map
	// before the first sync.
	want := `{"lastUpdated":"2026-03-04T05:06:12Z","currentTime":"2026-03-04T05:06:12Z","nodeEligible":true,"healthy":true}`
	if raw != want {
		t.Fatalf("/healthz body\n got %s\nwant %s", raw, want)
	}

	code, body, _ := f.get(t, "/livez")
	if code != http.StatusOK {
		t.Fatalf("/livez %d", code)
	}
	if got := keys(body); !slices.Equal(got, []string{"currentTime", "healthy", "lastUpdated"}) {
		t.Fatalf("/livez keys %v", got)
	}
}

func TestProxyHealthQueuedUpdateTimesOut(t *testing.T) {
	f := newProxyFixture(t)
	f.hs.Updated(model.IPv4)
	lastSync := f.clk.Now()

	f.clk.Step(10 * time.Second)
	f.hs.QueuedUpdate(model.IPv4)
	queued := f.clk.Now()

	// Just under the timeout: still healthy, lastUpdated reported as now.
	f.clk.SetTime(queued.Add(timeout - time.Nanosecond))
	code, body, _ := f.get(t, "/healthz")
	if code != http.StatusOK || body["lastUpdated"] != ts(f.clk.Now()) {
		t.Fatalf("before timeout: %d %v", code, body)
	}

	// At the timeout: unhealthy on both endpoints, lastUpdated is the real
	// last sync.
	f.clk.SetTime(queued.Add(timeout))
	for _, path := range []string{"/healthz", "/livez"} {
		code, body, _ := f.get(t, path)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("%s after timeout: %d", path, code)
		}
		if body["healthy"] != false || body["lastUpdated"] != ts(lastSync) || body["currentTime"] != ts(f.clk.Now()) {
			t.Fatalf("%s body %v", path, body)
		}
		st := body["status"].(map[string]any)["IPv4"].(map[string]any)
		if st["healthy"] != false || st["lastUpdated"] != ts(lastSync) {
			t.Fatalf("%s status %v", path, st)
		}
	}

	// A successful sync makes it healthy again.
	f.hs.Updated(model.IPv4)
	if code, _, _ := f.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("after Updated: %d", code)
	}
}

func TestProxyHealthOldestQueuedUpdateCounts(t *testing.T) {
	f := newProxyFixture(t)
	f.hs.Updated(model.IPv4)
	f.hs.QueuedUpdate(model.IPv4)
	f.clk.Step(timeout / 2)
	f.hs.QueuedUpdate(model.IPv4) // does not restart the clock
	f.clk.Step(timeout / 2)
	if f.hs.Healthy() {
		t.Fatal("healthy although the oldest queued update is timeout old")
	}
}

func TestProxyHealthNeverSyncedIsHealthy(t *testing.T) {
	// Like kube-proxy: a family that never synced is starting up.
	f := newProxyFixture(t)
	f.hs.QueuedUpdate(model.IPv4)
	f.clk.Step(10 * timeout)
	if code, _, _ := f.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
}

func TestProxyHealthDualStack(t *testing.T) {
	f := newProxyFixture(t)
	f.hs.Updated(model.IPv4)
	f.hs.Updated(model.IPv6)
	f.hs.QueuedUpdate(model.IPv6)
	f.clk.Step(timeout)
	f.hs.Updated(model.IPv4)

	code, body, _ := f.get(t, "/livez")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/livez %d", code)
	}
	st := body["status"].(map[string]any)
	if st["IPv4"].(map[string]any)["healthy"] != true || st["IPv6"].(map[string]any)["healthy"] != false {
		t.Fatalf("status %v", st)
	}
	// lastUpdated is the most recent family's.
	if body["lastUpdated"] != ts(f.clk.Now()) {
		t.Fatalf("lastUpdated %v", body["lastUpdated"])
	}
}

func TestProxyHealthNodeEligibility(t *testing.T) {
	deleting := readyNode()
	now := metav1.NewTime(t0)
	deleting.DeletionTimestamp = &now
	tainted := readyNode()
	tainted.Spec.Taints = []v1.Taint{{Key: "other", Effect: v1.TaintEffectNoSchedule}, {Key: health.ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	otherTaint := readyNode()
	otherTaint.Spec.Taints = []v1.Taint{{Key: "node.kubernetes.io/unschedulable", Effect: v1.TaintEffectNoSchedule}}

	for name, c := range map[string]struct {
		node     *v1.Node
		eligible bool
	}{
		"ready":       {readyNode(), true},
		"other taint": {otherTaint, true},
		"deleting":    {deleting, false},
		"autoscaler":  {tainted, false},
		"unknown":     {nil, false},
	} {
		f := newProxyFixture(t)
		f.node.node = c.node
		code, body, _ := f.get(t, "/healthz")
		wantCode := http.StatusOK
		if !c.eligible {
			wantCode = http.StatusServiceUnavailable
		}
		if code != wantCode || body["nodeEligible"] != c.eligible || body["healthy"] != true {
			t.Errorf("%s: /healthz %d %v", name, code, body)
		}
		// /livez ignores the node and has no nodeEligible field.
		code, body, _ = f.get(t, "/livez")
		if _, has := body["nodeEligible"]; code != http.StatusOK || has {
			t.Errorf("%s: /livez %d %v", name, code, body)
		}
		if got := health.NodeEligible(c.node); got != c.eligible {
			t.Errorf("%s: NodeEligible %v", name, got)
		}
	}
}

func TestProxyHealthWithoutNodeGetter(t *testing.T) {
	hs, err := health.NewProxyHealthServer(health.ProxyHealthConfig{HealthTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !hs.NodeEligible() {
		t.Fatal("not eligible without a NodeGetter")
	}
}

func TestProxyHealthMetrics(t *testing.T) {
	f := newProxyFixture(t)
	f.get(t, "/healthz")
	f.get(t, "/livez")
	f.node.node = nil
	f.get(t, "/healthz")
	f.get(t, "/healthz")
	want := `
# HELP kubeproxy_proxy_healthz_total [ALPHA] Cumulative proxy healthz HTTP status
# TYPE kubeproxy_proxy_healthz_total counter
kubeproxy_proxy_healthz_total{code="200"} 1
kubeproxy_proxy_healthz_total{code="503"} 2
# HELP kubeproxy_proxy_livez_total [ALPHA] Cumulative proxy livez HTTP status
# TYPE kubeproxy_proxy_livez_total counter
kubeproxy_proxy_livez_total{code="200"} 1
`
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want), "kubeproxy_proxy_healthz_total", "kubeproxy_proxy_livez_total"); err != nil {
		t.Error(err)
	}
}

func TestNewProxyHealthServerValidates(t *testing.T) {
	if _, err := health.NewProxyHealthServer(health.ProxyHealthConfig{}); err == nil {
		t.Error("zero HealthTimeout accepted")
	}
	if _, err := health.NewProxyHealthServer(health.ProxyHealthConfig{HealthTimeout: time.Second, Addr: "10256"}); err == nil {
		t.Error("address without host accepted")
	}
}

func waitOpen(t *testing.T, fl *fakelisten.FakeListener, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadlockGuard)
	defer cancel()
	if err := fl.WaitOpen(ctx, addr); err != nil {
		t.Fatalf("%s never opened: %v", addr, err)
	}
}

func fakeClient(fl *fakelisten.FakeListener) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: fl.Dial, DisableKeepAlives: true}}
}

func TestProxyHealthRunOnFakeListener(t *testing.T) {
	fl := fakelisten.NewFakeListener()
	hs, err := health.NewProxyHealthServer(health.ProxyHealthConfig{
		HealthTimeout: time.Minute, Listener: fl, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hs.Run(ctx) }()

	waitOpen(t, fl, "0.0.0.0:10256")
	// Default address, dialled on a node IP through the wildcard.
	resp, err := fakeClient(fl).Get("http://192.0.2.10:10256/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := fl.Calls(); !slices.Equal(got, []string{"tcp 0.0.0.0:10256"}) {
		t.Fatalf("listen calls %v", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(deadlockGuard):
		t.Fatal("Run did not return")
	}
	if open := fl.Open(); len(open) != 0 {
		t.Fatalf("still listening on %v", open)
	}

	fl.FailAddr("0.0.0.0:10256", syscall.EADDRINUSE)
	if err := hs.Run(context.Background()); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run with a busy port: %v", err)
	}
}

func TestProxyHealthServeRealSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := health.NewProxyHealthServer(health.ProxyHealthConfig{HealthTimeout: time.Minute, Node: &nodeHolder{node: readyNode()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	resp, err := http.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"nodeEligible":true`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", resp.Header)
	}
}
