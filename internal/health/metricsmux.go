package health

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultMetricsBindAddress is kube-proxy's --metrics-bind-address default.
const DefaultMetricsBindAddress = "127.0.0.1:10249"

// configzGroup is the key kube-proxy's /configz nests its configuration
// under (the KubeProxyConfiguration API group).
const configzGroup = "kubeproxy.config.k8s.io"

// MetricsMuxConfig configures NewMetricsMux.
type MetricsMuxConfig struct {
	// Gatherer is served on /metrics (normally the *prometheus.Registry
	// passed to metrics.New). Required.
	Gatherer prometheus.Gatherer
	// ProxyMode is the text of /proxyMode ("iptables", "ipvs").
	ProxyMode string
	// EnableProfiling adds /debug/pprof (--profiling /
	// enableProfiling).
	EnableProfiling bool
	// Configz, when non-nil, is served on /configz as
	// {"kubeproxy.config.k8s.io": Configz}, like kube-proxy (pass the
	// effective v1alpha1 KubeProxyConfiguration).
	Configz any
}

// NewMetricsMux returns the handler for --metrics-bind-address. It serves
// what kube-proxy serves there:
//
//   - /metrics: the Prometheus exposition of cfg.Gatherer;
//   - /healthz (and /healthz/ping): "ok", a liveness ping of the HTTP
//     server itself, like the apiserver healthz handler kube-proxy installs
//     there (the proxier health is on --healthz-bind-address; kube-proxy
//     serves no /livez on the metrics address, so neither do we);
//   - /proxyMode: the mode name as plain text;
//   - /configz when cfg.Configz is set;
//   - /debug/pprof/... when profiling is enabled.
func NewMetricsMux(cfg MetricsMuxConfig) (*http.ServeMux, error) {
	if cfg.Gatherer == nil {
		return nil, fmt.Errorf("metrics mux: Gatherer is required")
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", servePingHealthz)
	mux.HandleFunc("/healthz/ping", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprint(w, "ok")
	})
	mode := cfg.ProxyMode
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, mode)
	})
	if cfg.Configz != nil {
		// Encode once up front: a config that cannot be encoded is a startup
		// error, not a 500 at every request.
		body, err := json.Marshal(map[string]any{configzGroup: cfg.Configz})
		if err != nil {
			return nil, fmt.Errorf("metrics mux: encoding configz: %w", err)
		}
		mux.HandleFunc("/configz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write(body)
		})
	}
	if cfg.EnableProfiling {
		mux.HandleFunc("/debug/pprof", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/debug/pprof/", http.StatusFound)
		})
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux, nil
}

// servePingHealthz answers like the apiserver's healthz handler with only the
// ping check: "ok", or with ?verbose the list of checks.
func servePingHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if _, verbose := r.URL.Query()["verbose"]; !verbose {
		_, _ = fmt.Fprint(w, "ok")
		return
	}
	_, _ = fmt.Fprint(w, "[+]ping ok\nhealthz check passed\n")
}
