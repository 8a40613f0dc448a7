// Package metrics defines the proxy's Prometheus metrics.
//
// Every kube-proxy metric that applies to the iptables and IPVS modes is
// exposed under kube-proxy's own name, help text, labels and buckets
// (mirrored from kube-proxy v1.37 pkg/proxy/metrics), so existing dashboards
// and alerts keep working. Help texts carry the "[ALPHA] " prefix that
// kube-proxy's metrics framework adds, so a scrape looks the same too.
// Our own metrics live under the "kpr_" prefix.
//
// Nothing here is package-global: New registers everything on the registry
// the caller passes, and the caller hands the *Metrics to whoever records.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kpr-proxy/kpr/internal/model"
)

const kubeProxySubsystem = "kubeproxy"

// alpha mirrors how k8s.io/component-base/metrics annotates the help text of
// ALPHA-stability metrics, which all of kube-proxy's are.
func alpha(help string) string { return "[ALPHA] " + help }

// syncBuckets are kube-proxy's buckets for sync durations: 1ms .. ~16s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// networkProgrammingBuckets are kube-proxy's buckets for
// kubeproxy_network_programming_duration_seconds: 0.25s, 0.5s, 1..59s,
// 60..115s every 5s, 2..5min every 30s.
func networkProgrammingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// SyncKind says whether a sync rewrote all rules or only changed Services'.
type SyncKind string

const (
	// SyncAny records only the overall sync duration (IPVS mode, which,
	// like kube-proxy's, has no full/partial distinction).
	SyncAny     SyncKind = ""
	SyncFull    SyncKind = "full"
	SyncPartial SyncKind = "partial"
)

// TrafficPolicy is the traffic_policy label of
// kubeproxy_sync_proxy_rules_no_local_endpoints_total.
type TrafficPolicy string

const (
	TrafficPolicyInternal TrafficPolicy = "internal"
	TrafficPolicyExternal TrafficPolicy = "external"
)

// iptables table names for the "table" label.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
	TableMangle = "mangle"
)

// Metrics holds every metric the proxy records. Methods are safe for
// concurrent use. A nil *Metrics records nothing, which keeps unit tests of
// other packages free of registries.
type Metrics struct {
	reg prometheus.Registerer

	syncProxyRulesLatency        *prometheus.HistogramVec
	syncFullProxyRulesLatency    *prometheus.HistogramVec
	syncPartialProxyRulesLatency *prometheus.HistogramVec
	syncProxyRulesLastTimestamp  *prometheus.GaugeVec
	syncProxyRulesLastQueued     *prometheus.GaugeVec
	networkProgrammingLatency    *prometheus.HistogramVec

	endpointChangesPending prometheus.Gauge
	endpointChangesTotal   prometheus.Counter
	serviceChangesPending  prometheus.Gauge
	serviceChangesTotal    prometheus.Counter

	iptablesRestoreFailures        *prometheus.CounterVec
	iptablesPartialRestoreFailures *prometheus.CounterVec
	iptablesRulesTotal             *prometheus.GaugeVec
	iptablesRulesLastSync          *prometheus.GaugeVec

	noLocalEndpoints *prometheus.GaugeVec

	proxyHealthzTotal *prometheus.CounterVec
	proxyLivezTotal   *prometheus.CounterVec

	conntrackReconcileLatency *prometheus.HistogramVec
	conntrackDeletedEntries   *prometheus.CounterVec

	invalidObjects *prometheus.CounterVec
	restoreBytes   *prometheus.HistogramVec
	restoreLines   *prometheus.HistogramVec
}

// New creates the metrics and registers them, plus the Go runtime and process
// collectors, on reg. It panics if one of the proxy's metrics is already
// registered there (a programming error: New called twice on one registry);
// Go and process collectors already present are kept.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,

		syncProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_duration_seconds",
			Help:      alpha("SyncProxyRules latency in seconds"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		syncFullProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_full_proxy_rules_duration_seconds",
			Help:      alpha("SyncProxyRules latency in seconds for full resyncs"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		syncPartialProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_partial_proxy_rules_duration_seconds",
			Help:      alpha("SyncProxyRules latency in seconds for partial resyncs"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		syncProxyRulesLastTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_last_timestamp_seconds",
			Help:      alpha("The last time proxy rules were successfully synced"),
		}, []string{"ip_family"}),
		syncProxyRulesLastQueued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_last_queued_timestamp_seconds",
			Help:      alpha("The last time a sync of proxy rules was queued"),
		}, []string{"ip_family"}),
		networkProgrammingLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "network_programming_duration_seconds",
			Help:      alpha("In Cluster Network Programming Latency in seconds"),
			Buckets:   networkProgrammingBuckets(),
		}, []string{"ip_family"}),

		endpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_endpoint_changes_pending",
			Help:      alpha("Pending proxy rules Endpoint changes"),
		}),
		endpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_endpoint_changes_total",
			Help:      alpha("Cumulative proxy rules Endpoint changes"),
		}),
		serviceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_service_changes_pending",
			Help:      alpha("Pending proxy rules Service changes"),
		}),
		serviceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_service_changes_total",
			Help:      alpha("Cumulative proxy rules Service changes"),
		}),

		iptablesRestoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_iptables_restore_failures_total",
			Help:      alpha("Cumulative proxy iptables restore failures"),
		}, []string{"ip_family"}),
		iptablesPartialRestoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_iptables_partial_restore_failures_total",
			Help:      alpha("Cumulative proxy iptables partial restore failures"),
		}, []string{"ip_family"}),
		iptablesRulesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_iptables_total",
			Help:      alpha("Total number of iptables rules owned by kube-proxy"),
		}, []string{"table", "ip_family"}),
		iptablesRulesLastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_iptables_last",
			Help:      alpha("Number of iptables rules written by kube-proxy in last sync"),
		}, []string{"table", "ip_family"}),

		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "sync_proxy_rules_no_local_endpoints_total",
			Help:      alpha("Number of services with a Local traffic policy and no endpoints"),
		}, []string{"traffic_policy", "ip_family"}),

		proxyHealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "proxy_healthz_total",
			Help:      alpha("Cumulative proxy healthz HTTP status"),
		}, []string{"code"}),
		proxyLivezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "proxy_livez_total",
			Help:      alpha("Cumulative proxy livez HTTP status"),
		}, []string{"code"}),

		conntrackReconcileLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "conntrack_reconciler_sync_duration_seconds",
			Help:      alpha("ReconcileConntrackFlowsLatency latency in seconds"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		conntrackDeletedEntries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "conntrack_reconciler_deleted_entries_total",
			Help:      alpha("Cumulative conntrack flows deleted by conntrack reconciler"),
		}, []string{"ip_family"}),

		invalidObjects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpr_invalid_objects_total",
			Help: "Services and EndpointSlices (or parts of them) skipped because they are malformed, by kind and reason.",
		}, []string{"kind", "reason"}),
		// 256 B .. 1 GiB; _sum is the total sent to the kernel.
		restoreBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kpr_iptables_restore_bytes",
			Help:    "Size in bytes of each iptables-restore input, by sync kind (full or partial).",
			Buckets: prometheus.ExponentialBuckets(256, 4, 12),
		}, []string{"ip_family", "sync_kind"}),
		// 10 .. ~10M lines.
		restoreLines: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kpr_iptables_restore_lines",
			Help:    "Lines in each iptables-restore input, by sync kind (full or partial).",
			Buckets: prometheus.ExponentialBuckets(10, 4, 11),
		}, []string{"ip_family", "sync_kind"}),
	}

	reg.MustRegister(
		m.syncProxyRulesLatency,
		m.syncFullProxyRulesLatency,
		m.syncPartialProxyRulesLatency,
		m.syncProxyRulesLastTimestamp,
		m.syncProxyRulesLastQueued,
		m.networkProgrammingLatency,
		m.endpointChangesPending,
		m.endpointChangesTotal,
		m.serviceChangesPending,
		m.serviceChangesTotal,
		m.iptablesRestoreFailures,
		m.iptablesPartialRestoreFailures,
		m.iptablesRulesTotal,
		m.iptablesRulesLastSync,
		m.noLocalEndpoints,
		m.proxyHealthzTotal,
		m.proxyLivezTotal,
		m.conntrackReconcileLatency,
		m.conntrackDeletedEntries,
		m.invalidObjects,
		m.restoreBytes,
		m.restoreLines,
	)
	// kube-proxy's registry has the process collector and the Go collector
	// with all runtime/metrics; mirror that.
	registerOrKeep(reg, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerOrKeep(reg, collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)))
	return m
}

// registerOrKeep registers a standard collector unless the caller's registry
// already has one of its own (same or differently configured): then the
// caller's stays and ours is dropped, since both expose the same go_* or
// process_* names.
func registerOrKeep(reg prometheus.Registerer, c prometheus.Collector) {
	_ = reg.Register(c)
}

func fam(f model.Family) string { return f.String() }

func seconds(d time.Duration) float64 { return d.Seconds() }

// ObserveSync records how long one sync of rules took. kind SyncAny records
// only kubeproxy_sync_proxy_rules_duration_seconds; SyncFull and SyncPartial
// also record the matching full/partial histogram, as kube-proxy's iptables
// mode does.
func (m *Metrics) ObserveSync(f model.Family, kind SyncKind, d time.Duration) {
	if m == nil {
		return
	}
	m.syncProxyRulesLatency.WithLabelValues(fam(f)).Observe(seconds(d))
	switch kind {
	case SyncFull:
		m.syncFullProxyRulesLatency.WithLabelValues(fam(f)).Observe(seconds(d))
	case SyncPartial:
		m.syncPartialProxyRulesLatency.WithLabelValues(fam(f)).Observe(seconds(d))
	}
}

// SyncSucceeded sets kubeproxy_sync_proxy_rules_last_timestamp_seconds.
func (m *Metrics) SyncSucceeded(f model.Family, at time.Time) {
	if m == nil {
		return
	}
	m.syncProxyRulesLastTimestamp.WithLabelValues(fam(f)).Set(unixSeconds(at))
}

// SyncQueued sets kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds;
// call it whenever a sync is requested.
func (m *Metrics) SyncQueued(f model.Family, at time.Time) {
	if m == nil {
		return
	}
	m.syncProxyRulesLastQueued.WithLabelValues(fam(f)).Set(unixSeconds(at))
}

// unixSeconds matches prometheus' Gauge.SetToCurrentTime resolution.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// ObserveNetworkProgramming records the time from an object change (the
// EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time) to its
// rules being programmed.
func (m *Metrics) ObserveNetworkProgramming(f model.Family, d time.Duration) {
	if m == nil {
		return
	}
	m.networkProgrammingLatency.WithLabelValues(fam(f)).Observe(seconds(d))
}

// EndpointChanged counts one EndpointSlice change seen by the tracker.
func (m *Metrics) EndpointChanged() {
	if m == nil {
		return
	}
	m.endpointChangesTotal.Inc()
}

// SetEndpointChangesPending sets the number of Services with endpoint
// changes not yet synced.
func (m *Metrics) SetEndpointChangesPending(n int) {
	if m == nil {
		return
	}
	m.endpointChangesPending.Set(float64(n))
}

// ServiceChanged counts one Service change seen by the tracker.
func (m *Metrics) ServiceChanged() {
	if m == nil {
		return
	}
	m.serviceChangesTotal.Inc()
}

// SetServiceChangesPending sets the number of Service changes not yet synced.
func (m *Metrics) SetServiceChangesPending(n int) {
	if m == nil {
		return
	}
	m.serviceChangesPending.Set(float64(n))
}

// IPTablesRestoreFailed counts a failed iptables-restore.
func (m *Metrics) IPTablesRestoreFailed(f model.Family) {
	if m == nil {
		return
	}
	m.iptablesRestoreFailures.WithLabelValues(fam(f)).Inc()
}

// IPTablesPartialRestoreFailed counts a failed partial restore (which falls
// back to a full one).
func (m *Metrics) IPTablesPartialRestoreFailed(f model.Family) {
	if m == nil {
		return
	}
	m.iptablesPartialRestoreFailures.WithLabelValues(fam(f)).Inc()
}

// SetIPTablesRules sets, for one table, the number of rules the proxy owns
// (kubeproxy_sync_proxy_rules_iptables_total) and the number written in the
// last sync (kubeproxy_sync_proxy_rules_iptables_last).
func (m *Metrics) SetIPTablesRules(f model.Family, table string, total, lastSync int) {
	if m == nil {
		return
	}
	m.iptablesRulesTotal.WithLabelValues(table, fam(f)).Set(float64(total))
	m.iptablesRulesLastSync.WithLabelValues(table, fam(f)).Set(float64(lastSync))
}

// SetNoLocalEndpoints sets how many Services with a Local traffic policy
// have no local endpoints.
func (m *Metrics) SetNoLocalEndpoints(f model.Family, policy TrafficPolicy, n int) {
	if m == nil {
		return
	}
	m.noLocalEndpoints.WithLabelValues(string(policy), fam(f)).Set(float64(n))
}

// HealthzServed counts one /healthz answer by HTTP status code.
func (m *Metrics) HealthzServed(code int) {
	if m == nil {
		return
	}
	m.proxyHealthzTotal.WithLabelValues(strconv.Itoa(code)).Inc()
}

// LivezServed counts one /livez answer by HTTP status code.
func (m *Metrics) LivezServed(code int) {
	if m == nil {
		return
	}
	m.proxyLivezTotal.WithLabelValues(strconv.Itoa(code)).Inc()
}

// ObserveConntrackReconcile records one conntrack cleanup pass: its duration
// and how many entries it deleted.
func (m *Metrics) ObserveConntrackReconcile(f model.Family, d time.Duration, deleted int) {
	if m == nil {
		return
	}
	m.conntrackReconcileLatency.WithLabelValues(fam(f)).Observe(seconds(d))
	if deleted > 0 {
		m.conntrackDeletedEntries.WithLabelValues(fam(f)).Add(float64(deleted))
	} else {
		// Create the child so the series exists from the first pass.
		m.conntrackDeletedEntries.WithLabelValues(fam(f))
	}
}

// InvalidObject counts an object (or part of one) skipped as malformed.
// kind is "Service" or "EndpointSlice"; reason is a short fixed
// snake_case string (never free text, to keep cardinality bounded).
func (m *Metrics) InvalidObject(kind, reason string) {
	if m == nil {
		return
	}
	m.invalidObjects.WithLabelValues(kind, reason).Inc()
}

// ObserveRestore records the size of one iptables-restore input.
func (m *Metrics) ObserveRestore(f model.Family, kind SyncKind, bytes, lines int) {
	if m == nil {
		return
	}
	k := string(kind)
	if k == "" {
		k = string(SyncFull)
	}
	m.restoreBytes.WithLabelValues(fam(f), k).Observe(float64(bytes))
	m.restoreLines.WithLabelValues(fam(f), k).Observe(float64(lines))
}
