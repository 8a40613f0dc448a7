package health_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kpr-proxy/kpr/internal/health"
	fakelisten "github.com/kpr-proxy/kpr/internal/health/testing"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

func serve(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func newMux(t *testing.T, cfg health.MetricsMuxConfig) http.Handler {
	t.Helper()
	if cfg.Gatherer == nil {
		reg := prometheus.NewRegistry()
		m := metrics.New(reg)
		m.ServiceChanged()
		m.ObserveSync(model.IPv4, metrics.SyncFull, time.Second)
		cfg.Gatherer = reg
	}
	mux, err := health.NewMetricsMux(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return mux
}

func TestMetricsMuxMetrics(t *testing.T) {
	mux := newMux(t, health.MetricsMuxConfig{ProxyMode: "iptables"})
	rec := serve(t, mux, "/metrics")
	body := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics %d", rec.Code)
	}
	for _, want := range []string{
		"kubeproxy_sync_proxy_rules_service_changes_total 1\n",
		`kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1`,
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestMetricsMuxHealthzAndProxyMode(t *testing.T) {
	mux := newMux(t, health.MetricsMuxConfig{ProxyMode: "ipvs"})
	for _, c := range []struct {
		path, body, ctype string
	}{
		{"/healthz", "ok", "text/plain; charset=utf-8"},
		{"/healthz?verbose", "[+]ping ok\nhealthz check passed\n", "text/plain; charset=utf-8"},
		{"/healthz/ping", "ok", "text/plain; charset=utf-8"},
		{"/proxyMode", "ipvs", "text/plain; charset=utf-8"},
	} {
		rec := serve(t, mux, c.path)
		if rec.Code != http.StatusOK || rec.Body.String() != c.body || rec.Header().Get("Content-Type") != c.ctype {
			t.Errorf("%s: %d %q %q", c.path, rec.Code, rec.Body.String(), rec.Header().Get("Content-Type"))
		}
		if c.path != "/healthz/ping" && rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", c.path)
		}
	}
	// kube-proxy serves neither /livez nor pprof (profiling off) nor
	// /configz (none given) here.
	for _, path := range []string{"/livez", "/debug/pprof/", "/configz", "/metrics/extra", "/"} {
		if rec := serve(t, mux, path); rec.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, rec.Code)
		}
	}
}

func TestMetricsMuxProfiling(t *testing.T) {
	mux := newMux(t, health.MetricsMuxConfig{ProxyMode: "iptables", EnableProfiling: true})
	rec := serve(t, mux, "/debug/pprof")
	if rec.Code != http.StatusFound || rec.Header().Get("Location") != "/debug/pprof/" {
		t.Fatalf("/debug/pprof: %d %v", rec.Code, rec.Header())
	}
	rec = serve(t, mux, "/debug/pprof/")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "goroutine") {
		t.Fatalf("/debug/pprof/: %d", rec.Code)
	}
	if rec := serve(t, mux, "/debug/pprof/goroutine?debug=1"); rec.Code != http.StatusOK {
		t.Fatalf("goroutine profile: %d", rec.Code)
	}
}

func TestMetricsMuxConfigz(t *testing.T) {
	type cfg struct {
		Mode string `json:"mode"`
	}
	mux := newMux(t, health.MetricsMuxConfig{ProxyMode: "iptables", Configz: cfg{Mode: "iptables"}})
	rec := serve(t, mux, "/configz")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/configz %d %v", rec.Code, rec.Header())
	}
	var got map[string]map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["kubeproxy.config.k8s.io"]["mode"] != "iptables" {
		t.Fatalf("/configz %s", rec.Body.String())
	}

	if _, err := health.NewMetricsMux(health.MetricsMuxConfig{Gatherer: prometheus.NewRegistry(), Configz: make(chan int)}); err == nil {
		t.Error("unencodable configz accepted")
	}
	if _, err := health.NewMetricsMux(health.MetricsMuxConfig{}); err == nil {
		t.Error("nil Gatherer accepted")
	}
}

func TestListenAndServe(t *testing.T) {
	fl := fakelisten.NewFakeListener()
	mux := newMux(t, health.MetricsMuxConfig{ProxyMode: "iptables"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- health.ListenAndServe(ctx, fl, health.DefaultMetricsBindAddress, mux) }()
	waitOpen(t, fl, health.DefaultMetricsBindAddress)

	resp, err := fakeClient(fl).Get("http://" + health.DefaultMetricsBindAddress + "/proxyMode")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "iptables" {
		t.Fatalf("/proxyMode %q", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(deadlockGuard):
		t.Fatal("ListenAndServe did not return")
	}
}
