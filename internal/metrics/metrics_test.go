package metrics

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/kpr-proxy/kpr/internal/model"
)

// upstream is the golden list: kube-proxy v1.37 names, types, help texts
// (as exposed, with the [ALPHA] prefix) and label names, plus our kpr_
// additions.
var upstream = []struct {
	name, typ, help string
	labels          []string
}{
	{"kubeproxy_conntrack_reconciler_deleted_entries_total", "COUNTER", "[ALPHA] Cumulative conntrack flows deleted by conntrack reconciler", []string{"ip_family"}},
	{"kubeproxy_conntrack_reconciler_sync_duration_seconds", "HISTOGRAM", "[ALPHA] ReconcileConntrackFlowsLatency latency in seconds", []string{"ip_family"}},
	{"kubeproxy_iptables_ct_state_invalid_dropped_packets_total", "COUNTER", "[ALPHA] packets dropped by iptables to work around conntrack problems", nil},
	{"kubeproxy_iptables_localhost_nodeports_accepted_packets_total", "COUNTER", "[ALPHA] Number of packets accepted on nodeports of loopback interface", nil},
	{"kubeproxy_network_programming_duration_seconds", "HISTOGRAM", "[ALPHA] In Cluster Network Programming Latency in seconds", []string{"ip_family"}},
	{"kubeproxy_proxy_healthz_total", "COUNTER", "[ALPHA] Cumulative proxy healthz HTTP status", []string{"code"}},
	{"kubeproxy_proxy_livez_total", "COUNTER", "[ALPHA] Cumulative proxy livez HTTP status", []string{"code"}},
	{"kubeproxy_sync_full_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds for full resyncs", []string{"ip_family"}},
	{"kubeproxy_sync_partial_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds for partial resyncs", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_endpoint_changes_pending", "GAUGE", "[ALPHA] Pending proxy rules Endpoint changes", nil},
	{"kubeproxy_sync_proxy_rules_endpoint_changes_total", "COUNTER", "[ALPHA] Cumulative proxy rules Endpoint changes", nil},
	{"kubeproxy_sync_proxy_rules_iptables_last", "GAUGE", "[ALPHA] Number of iptables rules written by kube-proxy in last sync", []string{"ip_family", "table"}},
	{"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", "COUNTER", "[ALPHA] Cumulative proxy iptables partial restore failures", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "COUNTER", "[ALPHA] Cumulative proxy iptables restore failures", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_iptables_total", "GAUGE", "[ALPHA] Total number of iptables rules owned by kube-proxy", []string{"ip_family", "table"}},
	{"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "GAUGE", "[ALPHA] The last time a sync of proxy rules was queued", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "GAUGE", "[ALPHA] The last time proxy rules were successfully synced", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_no_local_endpoints_total", "GAUGE", "[ALPHA] Number of services with a Local traffic policy and no endpoints", []string{"ip_family", "traffic_policy"}},
	{"kubeproxy_sync_proxy_rules_service_changes_pending", "GAUGE", "[ALPHA] Pending proxy rules Service changes", nil},
	{"kubeproxy_sync_proxy_rules_service_changes_total", "COUNTER", "[ALPHA] Cumulative proxy rules Service changes", nil},
	{"kpr_invalid_objects_total", "COUNTER", "", []string{"kind", "reason"}},
	{"kpr_iptables_restore_bytes", "HISTOGRAM", "", []string{"ip_family", "sync_kind"}},
	{"kpr_iptables_restore_lines", "HISTOGRAM", "", []string{"ip_family", "sync_kind"}},
}

type fakeNFAcct map[string]uint64

func (f fakeNFAcct) Packets(name string) (uint64, error) {
	n, ok := f[name]
	if !ok {
		return 0, errors.New("no such counter")
	}
	return n, nil
}

// exercise touches every metric once so every vector has a child.
func exercise(m *Metrics) {
	m.ObserveSync(model.IPv4, SyncFull, 1500*time.Millisecond)
	m.ObserveSync(model.IPv4, SyncPartial, 20*time.Millisecond)
	m.ObserveSync(model.IPv6, SyncAny, 3*time.Millisecond)
	m.SyncSucceeded(model.IPv4, time.Unix(1700000000, 500000000))
	m.SyncQueued(model.IPv4, time.Unix(1700000001, 0))
	m.ObserveNetworkProgramming(model.IPv4, 2*time.Second)
	m.EndpointChanged()
	m.EndpointChanged()
	m.SetEndpointChangesPending(7)
	m.ServiceChanged()
	m.SetServiceChangesPending(3)
	m.IPTablesRestoreFailed(model.IPv4)
	m.IPTablesPartialRestoreFailed(model.IPv6)
	m.SetIPTablesRules(model.IPv4, TableNAT, 100, 40)
	m.SetIPTablesRules(model.IPv4, TableFilter, 10, 10)
	m.SetNoLocalEndpoints(model.IPv4, TrafficPolicyInternal, 2)
	m.SetNoLocalEndpoints(model.IPv4, TrafficPolicyExternal, 1)
	m.HealthzServed(200)
	m.HealthzServed(503)
	m.LivezServed(200)
	m.ObserveConntrackReconcile(model.IPv4, 5*time.Millisecond, 4)
	m.InvalidObject("Service", "bad_cluster_ip")
	m.ObserveRestore(model.IPv4, SyncPartial, 4096, 80)
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func TestGoldenNamesHelpLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	if err := m.RegisterNFAcct(fakeNFAcct{CTStateInvalidDroppedNFAcctCounter: 5, LocalhostNodePortAcceptedNFAcctCounter: 6}, nil); err != nil {
		t.Fatalf("RegisterNFAcct: %v", err)
	}
	exercise(m)
	got := gather(t, reg)

	var ours []string
	for name := range got {
		if strings.HasPrefix(name, "kubeproxy_") || strings.HasPrefix(name, "kpr_") {
			ours = append(ours, name)
		}
	}
	sort.Strings(ours)
	var want []string
	for _, u := range upstream {
		want = append(want, u.name)
	}
	sort.Strings(want)
	if !slices.Equal(ours, want) {
		t.Fatalf("metric names differ from the golden list\n got: %v\nwant: %v", ours, want)
	}

	for _, u := range upstream {
		mf := got[u.name]
		if mf.GetType().String() != u.typ {
			t.Errorf("%s: type %s, want %s", u.name, mf.GetType(), u.typ)
		}
		if u.help != "" && mf.GetHelp() != u.help {
			t.Errorf("%s: help %q, want %q", u.name, mf.GetHelp(), u.help)
		}
		for _, metric := range mf.GetMetric() {
			var labels []string
			for _, lp := range metric.GetLabel() {
				labels = append(labels, lp.GetName())
			}
			if !slices.Equal(labels, u.labels) {
				t.Errorf("%s: labels %v, want %v", u.name, labels, u.labels)
			}
		}
	}

	// Go and process collectors, as kube-proxy exposes them.
	for _, name := range []string{"go_goroutines", "go_gc_duration_seconds", "process_cpu_seconds_total", "go_sched_gomaxprocs_threads"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
}

func TestValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	exercise(m)

	for _, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.endpointChangesTotal, 2},
		{m.endpointChangesPending, 7},
		{m.serviceChangesTotal, 1},
		{m.serviceChangesPending, 3},
		{m.syncProxyRulesLastTimestamp.WithLabelValues("IPv4"), 1700000000.5},
		{m.syncProxyRulesLastQueued.WithLabelValues("IPv4"), 1700000001},
		{m.iptablesRestoreFailures.WithLabelValues("IPv4"), 1},
		{m.iptablesPartialRestoreFailures.WithLabelValues("IPv6"), 1},
		{m.iptablesRulesTotal.WithLabelValues("nat", "IPv4"), 100},
		{m.iptablesRulesLastSync.WithLabelValues("nat", "IPv4"), 40},
		{m.iptablesRulesTotal.WithLabelValues("filter", "IPv4"), 10},
		{m.noLocalEndpoints.WithLabelValues("internal", "IPv4"), 2},
		{m.noLocalEndpoints.WithLabelValues("external", "IPv4"), 1},
		{m.proxyHealthzTotal.WithLabelValues("200"), 1},
		{m.proxyHealthzTotal.WithLabelValues("503"), 1},
		{m.proxyLivezTotal.WithLabelValues("200"), 1},
		{m.conntrackDeletedEntries.WithLabelValues("IPv4"), 4},
		{m.invalidObjects.WithLabelValues("Service", "bad_cluster_ip"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%v: got %v, want %v", c.c, got, c.want)
		}
	}

	// Full/partial histograms get only their own kind; the overall one gets
	// both plus the IPv6 SyncAny observation.
	if n := testutil.CollectAndCount(m.syncProxyRulesLatency); n != 2 {
		t.Errorf("sync_proxy_rules_duration_seconds has %d series, want 2", n)
	}
	want := `
# HELP kubeproxy_sync_full_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds for full resyncs
# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.002"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.004"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.008"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.016"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.032"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.064"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.128"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.256"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.512"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="1.024"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="2.048"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="4.096"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="8.192"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="16.384"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kubeproxy_sync_full_proxy_rules_duration_seconds"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.syncPartialProxyRulesLatency); n != 1 {
		t.Errorf("partial histogram has %d series, want 1", n)
	}
}

func TestNetworkProgrammingBuckets(t *testing.T) {
	b := networkProgrammingBuckets()
	if len(b) != 2+59+12+7 {
		t.Fatalf("%d buckets", len(b))
	}
	for _, w := range []float64{0.25, 0.5, 1, 2, 59, 60, 65, 115, 120, 150, 300} {
		if !slices.Contains(b, w) {
			t.Errorf("bucket %v missing", w)
		}
	}
	if !sort.Float64sAreSorted(b) || b[len(b)-1] != 300 {
		t.Errorf("buckets not ascending to 300: %v", b)
	}
}

func TestRestoreHistograms(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.ObserveRestore(model.IPv4, SyncFull, 1<<20, 5000)
	m.ObserveRestore(model.IPv4, SyncFull, 1<<10, 20)
	m.ObserveRestore(model.IPv6, SyncPartial, 300, 12)
	got := gather(t, reg)
	sums := map[string]float64{}
	for _, name := range []string{"kpr_iptables_restore_bytes", "kpr_iptables_restore_lines"} {
		for _, mt := range got[name].GetMetric() {
			key := name
			for _, lp := range mt.GetLabel() {
				key += fmt.Sprintf(",%s=%s", lp.GetName(), lp.GetValue())
			}
			sums[key] = mt.GetHistogram().GetSampleSum()
		}
	}
	want := map[string]float64{
		"kpr_iptables_restore_bytes,ip_family=IPv4,sync_kind=full":    1<<20 + 1<<10,
		"kpr_iptables_restore_bytes,ip_family=IPv6,sync_kind=partial": 300,
		"kpr_iptables_restore_lines,ip_family=IPv4,sync_kind=full":    5020,
		"kpr_iptables_restore_lines,ip_family=IPv6,sync_kind=partial": 12,
	}
	if !mapsEqual(sums, want) {
		t.Errorf("sums %v, want %v", sums, want)
	}
}

func mapsEqual(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func TestKprMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	exercise(m)
	problems, err := testutil.GatherAndLint(reg, "kpr_invalid_objects_total", "kpr_iptables_restore_bytes", "kpr_iptables_restore_lines")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestNFAcct(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	reader := fakeNFAcct{CTStateInvalidDroppedNFAcctCounter: 42}
	if err := m.RegisterNFAcct(reader, nil); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP kubeproxy_iptables_ct_state_invalid_dropped_packets_total [ALPHA] packets dropped by iptables to work around conntrack problems
# TYPE kubeproxy_iptables_ct_state_invalid_dropped_packets_total counter
kubeproxy_iptables_ct_state_invalid_dropped_packets_total 42
`
	// The localhost counter cannot be read: it is left out, the scrape
	// still succeeds.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		"kubeproxy_iptables_localhost_nodeports_accepted_packets_total"); err != nil {
		t.Error(err)
	}
	reader[LocalhostNodePortAcceptedNFAcctCounter] = 9
	if n, err := testutil.GatherAndCount(reg, "kubeproxy_iptables_localhost_nodeports_accepted_packets_total"); err != nil || n != 1 {
		t.Errorf("localhost counter: %d series, err %v", n, err)
	}
	if err := m.RegisterNFAcct(reader, nil); err == nil {
		t.Error("second RegisterNFAcct succeeded")
	}
}

func TestNilMetricsRecordsNothing(t *testing.T) {
	var m *Metrics
	exercise(m) // must not panic
}

func TestNewTwicePanicsButKeepsExistingGoCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	// A caller that registered the standard collectors itself.
	reg.MustRegister(prometheus.NewGoCollector())
	New(reg)

	defer func() {
		if recover() == nil {
			t.Error("second New on the same registry did not panic")
		}
	}()
	New(reg)
}

func TestSeparateRegistriesAreIndependent(t *testing.T) {
	r1, r2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	m1, m2 := New(r1), New(r2)
	m1.ServiceChanged()
	if got := testutil.ToFloat64(m2.serviceChangesTotal); got != 0 {
		t.Errorf("metrics leaked between registries: %v", got)
	}
}
