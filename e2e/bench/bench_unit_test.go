package bench

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func envOf(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Ns, []int{1000, 10000}) || c.BaselineN != 10 || c.Changes != 20 || c.Connects != 2000 {
		t.Errorf("defaults: %+v", c)
	}
	if !slices.Equal(c.Backends, []string{"legacy", "nft"}) || !slices.Equal(c.Proxies, []string{"kpr", "upstream"}) {
		t.Errorf("defaults: %+v", c)
	}
	if c.UpstreamNFTTimeout != 10*time.Minute {
		t.Errorf("UpstreamNFTTimeout = %s", c.UpstreamNFTTimeout)
	}
	steps := c.Steps()
	want := []Step{{N: 10, BaselineOnly: true}, {N: 1000}, {N: 10000}}
	if !slices.Equal(steps, want) {
		t.Errorf("Steps() = %v, want %v", steps, want)
	}
}

func TestParseConfigKnobs(t *testing.T) {
	c, err := ParseConfig(envOf(map[string]string{
		"BENCH_N":                    "10k, 1000,5K,1000",
		"BENCH_BACKENDS":             "nft",
		"BENCH_PROXIES":              "upstream,kpr",
		"BENCH_UPSTREAM_NFT_TIMEOUT": "90s",
		"BENCH_BASELINE_N":           "1000",
		"BENCH_CHANGES":              "3",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Ns, []int{1000, 5000, 10000}) {
		t.Errorf("Ns = %v", c.Ns)
	}
	if !slices.Equal(c.Proxies, []string{"upstream", "kpr"}) || !slices.Equal(c.Backends, []string{"nft"}) {
		t.Errorf("lists: %+v", c)
	}
	if c.UpstreamNFTTimeout != 90*time.Second || c.Changes != 3 {
		t.Errorf("%+v", c)
	}
	// The baseline is also a full step: it is not repeated.
	if got := c.Steps(); len(got) != 3 || got[0] != (Step{N: 1000}) {
		t.Errorf("Steps() = %v", got)
	}
	c, err = ParseConfig(envOf(map[string]string{"BENCH_BASELINE_N": "0"}))
	if err != nil || c.BaselineN != 0 || len(c.Steps()) != 2 {
		t.Errorf("BENCH_BASELINE_N=0: %v, %+v", err, c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, val string }{
		{"BENCH_N", "20000"},
		{"BENCH_N", "abc"},
		{"BENCH_N", "0"},
		{"BENCH_N", ","},
		{"BENCH_BACKENDS", "legacy,iptables"},
		{"BENCH_PROXIES", "cilium"},
		{"BENCH_MODES", "nftables"},
		{"BENCH_UPSTREAM_NFT_TIMEOUT", "10"},
		{"BENCH_UPSTREAM_NFT_TIMEOUT", "-1m"},
		{"BENCH_CHANGES", "0"},
		{"BENCH_CONNECTS", "many"},
	} {
		_, err := ParseConfig(envOf(map[string]string{tc.name: tc.val}))
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s=%q: want an error naming the variable, got %v", tc.name, tc.val, err)
		}
	}
}

func TestAddressPlan(t *testing.T) {
	svcRange := netip.MustParsePrefix("198.19.192.0/18")
	seen := map[netip.Addr]bool{EchoClusterIP: true}
	for i := 0; i < MaxServices; i++ {
		ip := DummyClusterIP(i)
		if !svcRange.Contains(ip) || ip == netip.MustParseAddr("198.19.255.255") {
			t.Fatalf("Service %d: ClusterIP %s outside the usable Service range", i, ip)
		}
		if seen[ip] {
			t.Fatalf("Service %d: ClusterIP %s used twice", i, ip)
		}
		seen[ip] = true
	}
	if !svcRange.Contains(EchoClusterIP) || EchoClusterIP == netip.MustParseAddr("198.19.192.1") {
		t.Errorf("echo ClusterIP %s", EchoClusterIP)
	}
	scale1 := netip.MustParsePrefix("198.18.0.0/16")
	scale2 := netip.MustParsePrefix("198.19.0.0/17")
	nodePods := netip.MustParsePrefix("198.18.0.0/20") // nodes' real pod CIDRs live here
	eps := map[netip.Addr]bool{}
	for k := 0; k < dummyPoolSize; k++ {
		a := DummyEndpoint(k)
		if !(scale1.Contains(a) || scale2.Contains(a)) || nodePods.Contains(a) {
			t.Fatalf("endpoint %d: %s outside the scale-bench ranges or in the nodes' pod CIDRs", k, a)
		}
		if b := a.As4(); b[3] == 0 || b[3] == 255 {
			t.Fatalf("endpoint %d: %s", k, a)
		}
		if eps[a] {
			t.Fatalf("endpoint %d: %s repeats inside the pool", k, a)
		}
		eps[a] = true
	}
	if DummyEndpoint(dummyPoolSize) != DummyEndpoint(0) {
		t.Error("the pool does not wrap")
	}
	// Within one Service, endpoints are distinct even across the wrap.
	perSvc := 10
	for i := 0; i < 10000; i++ {
		e := DummyEndpoints(i, perSvc)
		s := slices.Clone(e)
		slices.SortFunc(s, func(a, b netip.Addr) int { return a.Compare(b) })
		if len(slices.Compact(s)) != perSvc {
			t.Fatalf("Service %d has repeated endpoints %v", i, e)
		}
	}
	for j := 0; j < MaxProbeServices; j++ {
		ip := ProbeClusterIP(j)
		if seen[ip] || !netip.MustParsePrefix("198.19.192.0/24").Contains(ip) || ip == netip.MustParseAddr("198.19.192.1") {
			t.Fatalf("probe %d: ClusterIP %s", j, ip)
		}
		seen[ip] = true
	}
}

func TestWorkloadGrow(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	backend := netip.MustParseAddr("198.18.2.2")
	w := &Workload{Client: cs, PerService: 10, Workers: 4, Probes: 16, ProbeBackend: backend}
	if err := w.EnsureNamespace(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.CreateEcho(ctx, backend); err != nil {
		t.Fatal(err)
	}
	// At 10 Services, probes take all 9 places besides echo.
	if err := w.GrowTo(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if w.Total() != 10 || len(w.ProbeClusterIPs()) != 10 {
		t.Fatalf("at 10: total %d, probes+echo %d", w.Total(), len(w.ProbeClusterIPs()))
	}
	if err := w.GrowTo(ctx, 100); err != nil {
		t.Fatal(err)
	}
	ips := w.ClusterIPs()
	if w.Total() != 100 || len(ips) != 100 || len(w.ProbeClusterIPs()) != 17 {
		t.Fatalf("at 100: total %d, ips %d, probes+echo %d", w.Total(), len(ips), len(w.ProbeClusterIPs()))
	}
	svcs, err := cs.CoreV1().Services(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slicesList, err := cs.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs.Items) != 100 || len(slicesList.Items) != 100 {
		t.Fatalf("%d Services, %d EndpointSlices in the API", len(svcs.Items), len(slicesList.Items))
	}
	apiIPs := map[netip.Addr]bool{}
	for _, s := range svcs.Items {
		apiIPs[netip.MustParseAddr(s.Spec.ClusterIP)] = true
	}
	for _, ip := range ips {
		if !apiIPs[ip] {
			t.Errorf("ClusterIP %s not in the API", ip)
		}
	}
	// Probe slices point at the backend; dummy slices at 10 pool addresses.
	for _, s := range slicesList.Items {
		name := s.Labels["kubernetes.io/service-name"]
		switch {
		case strings.HasPrefix(name, "probe-") || name == EchoService:
			if len(s.Endpoints) != 1 || s.Endpoints[0].Addresses[0] != backend.String() {
				t.Errorf("%s: endpoints %v", name, s.Endpoints)
			}
		default:
			if len(s.Endpoints) != 10 {
				t.Errorf("%s: %d endpoints", name, len(s.Endpoints))
			}
		}
	}
	// The one-change write switches the echo slice.
	other := netip.MustParseAddr("198.18.2.3")
	if err := w.SetEchoBackend(ctx, other); err != nil {
		t.Fatal(err)
	}
	got, err := cs.DiscoveryV1().EndpointSlices(Namespace).Get(ctx, EchoService+"-bench", metav1.GetOptions{})
	if err != nil || got.Endpoints[0].Addresses[0] != other.String() {
		t.Errorf("echo slice after the change: %v, %v", got, err)
	}
}

func TestSliceObject(t *testing.T) {
	s := sliceObject("svc-00001", DummyEndpoints(1, 3), "")
	if s.Labels["kubernetes.io/service-name"] != "svc-00001" || s.Labels["endpointslice.kubernetes.io/managed-by"] != ManagedBy {
		t.Errorf("labels %v", s.Labels)
	}
	if len(s.Endpoints) != 3 || *s.Ports[0].Port != TargetPort || !*s.Endpoints[0].Conditions.Ready {
		t.Errorf("slice %+v", s)
	}
	for _, ep := range s.Endpoints {
		if ep.NodeName == nil || !strings.HasPrefix(*ep.NodeName, "bench-node-") {
			t.Errorf("dummy endpoint %v: nodeName %v, want a fictitious bench node", ep.Addresses, ep.NodeName)
		}
	}
	if e := sliceObject("echo", DummyEndpoints(1, 1), "node2"); *e.Endpoints[0].NodeName != "node2" {
		t.Errorf("echo endpoint nodeName %q, want node2", *e.Endpoints[0].NodeName)
	}
	svc := serviceObject("svc-00001", DummyClusterIP(1))
	if svc.Spec.Selector != nil || svc.Spec.ClusterIP != "198.19.193.1" || svc.Spec.Ports[0].Port != ServicePort {
		t.Errorf("service %+v", svc.Spec)
	}
}

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "4242 (kube (proxy) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 12 8 20 0 9 0 100 1000000 5000 18446744073709551615"
	u, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if u.UserSec != 2.5 || u.SysSec != 0.75 || u.ChildrenSec != 0.2 {
		t.Errorf("parseStat = %+v", u)
	}
	if _, err := parseStat("4242 (x) S 1 2"); err == nil {
		t.Error("short stat line: want an error")
	}
	hwm, err := parseVmHWM("Name:\tproxy\nVmPeak:\t 900 kB\nVmHWM:\t  285120 kB\nVmRSS:\t 1 kB\n")
	if err != nil || hwm != 285120*1024 {
		t.Errorf("parseVmHWM = %d, %v", hwm, err)
	}
	if _, err := parseVmHWM("Name: x\n"); err == nil {
		t.Error("no VmHWM: want an error")
	}
}

func TestShimLog(t *testing.T) {
	log := `{"running":true,"name":"iptables-restore","v6":false,"args":["--noflush"],"bytes":1000,"lines":20,"start_unix_nano":1000000000,"end_unix_nano":0,"exit":-1}
{"running":true,"name":"iptables-restore","v6":false,"args":["--noflush"],"bytes":9,"lines":2,"start_unix_nano":3000000000,"end_unix_nano":0,"exit":-1}
{"name":"iptables-restore","v6":false,"args":["-w","5","--noflush","--counters"],"bytes":1000,"lines":20,"start_unix_nano":1000000000,"end_unix_nano":1500000000,"exit":0}
{"name":"ip6tables-restore","v6":true,"args":["--noflush"],"bytes":50,"lines":3,"start_unix_nano":1100000000,"end_unix_nano":1200000000,"exit":0}
{"name":"iptables-legacy-restore","v6":false,"args":["--noflush","--test"],"bytes":7,"lines":1,"start_unix_nano":1200000000,"end_unix_nano":1300000000,"exit":0}
{"name":"iptables-restore","v6":false,"args":["--noflush"],"bytes":300,"lines":5,"start_unix_nano":2000000000,"end_unix_nano":2100000000,"exit":1}
{"name":"iptables-rest`
	entries, err := ParseShimLog([]byte(log))
	if err != nil {
		t.Fatalf("a torn last line must be skipped: %v", err)
	}
	if len(entries) != 4 {
		t.Fatalf("%d entries", len(entries))
	}
	all := SummarizeRestores(entries, false, time.Unix(0, 0), time.Unix(10, 0))
	if all.Count != 2 || all.Tests != 1 || all.Bytes != 1300 || all.MaxBytes != 1000 || all.MaxLines != 20 || all.Failures != 1 || all.DurationMs != 600 {
		t.Errorf("v4 summary %+v", all)
	}
	first := SummarizeRestores(entries, false, time.Unix(0, 0), time.Unix(2, 0))
	if first.Count != 1 || first.Bytes != 1000 {
		t.Errorf("window [0,2s): %+v", first)
	}
	if v6 := SummarizeRestores(entries, true, time.Unix(0, 0), time.Unix(10, 0)); v6.Count != 1 || v6.Lines != 3 {
		t.Errorf("v6 summary %+v", v6)
	}
	logged, err := parseShimLogAll([]byte(log))
	if err != nil {
		t.Fatal(err)
	}
	if run := runningRestores(logged); len(run) != 1 || run[0].Lines != 2 {
		t.Errorf("running restores: %+v", run)
	}
	if _, err := ParseShimLog([]byte("garbage\n{}\n")); err == nil {
		t.Error("a bad line that is not the last: want an error")
	}
}

const natSaveUpstream = `# Generated by iptables-save v1.8.9 on Tue Nov 24 21:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 198.19.192.10/32 -p tcp -m comment --comment "bench/echo:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SERVICES -d 198.19.193.0/32 -p tcp -m comment --comment "bench/svc-00000:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-CCCC
-A KUBE-SERVICES -d 198.19.193.1/32 -p tcp -m comment --comment "wrong port" -m tcp --dport 81 -j KUBE-SVC-DDDD
-A KUBE-SVC-AAAA ! -s 198.18.0.0/16 -d 198.19.192.10/32 -p tcp -m comment --comment "bench/echo:p cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAA -m comment --comment "bench/echo:p -> 198.18.2.2:8080" -j KUBE-SEP-BBBB
-A KUBE-SEP-BBBB -p tcp -m comment --comment "bench/echo:p" -m tcp -j DNAT --to-destination 198.18.2.2:8080
COMMIT
`

const natSaveKpr = `*nat
:KPR-SERVICES - [0:0]
-A KPR-SERVICES -d 198.0.0.0/8 -j KPR-DST-X
-A KPR-DST-X -d 198.19.192.0/24 -j KPR-DST-Y
-A KPR-DST-Y -d 198.19.192.10/32 -p tcp -m comment --comment "bench/echo:p cluster IP" -m tcp --dport 80 -j KPR-SVC-AAAA
-A KPR-DST-Y -d 198.19.193.1/32 -p tcp -m comment --comment "bench/svc-00001:p cluster IP" -m tcp --dport 80 -j KPR-SVC-CCCC
-A KPR-SEP-BBBB -p tcp -m comment --comment bench/echo:p -m tcp -j DNAT --to-destination 198.18.2.2:8080
COMMIT
`

func TestCheckNAT(t *testing.T) {
	want := []netip.Addr{EchoClusterIP, DummyClusterIP(0), DummyClusterIP(1)}
	up := CheckNAT([]byte(natSaveUpstream), want, ServicePort)
	if up.Found != 2 || up.Expected != 3 || up.Complete() || !slices.Equal(up.Missing, []string{"198.19.193.1"}) {
		t.Errorf("upstream: %+v", up)
	}
	if up.DNATRules != 1 || up.Rules != 7 {
		t.Errorf("upstream counts: %+v", up)
	}
	k := CheckNAT([]byte(natSaveKpr), want, ServicePort)
	if k.Found != 2 || !slices.Equal(k.Missing, []string{"198.19.193.0"}) || k.DNATRules != 1 {
		t.Errorf("kpr: %+v", k)
	}
	if c := CheckNAT([]byte(natSaveUpstream), want[:2], ServicePort); !c.Complete() {
		t.Errorf("first two: %+v", c)
	}
}

func TestCheckIPVSText(t *testing.T) {
	text := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C613C00A:0050 rr
  -> C6120202:1F90      Masq    1      0          0
TCP  C613C100:0050 rr
TCP  C613C101:0051 rr
`
	c := checkIPVSText([]byte(text), []netip.Addr{EchoClusterIP, DummyClusterIP(0), DummyClusterIP(1)}, 80)
	if c.Found != 2 || c.Rules != 3 || c.DNATRules != 1 || !slices.Equal(c.Missing, []string{"198.19.193.1"}) {
		t.Errorf("%+v", c)
	}
}

func TestSplitTablesAndProxyChains(t *testing.T) {
	save := "# c\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n# c\n*nat\n:KPR-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\nCOMMIT\n"
	secs, order := splitTables([]byte(save))
	if !slices.Equal(order, []string{"filter", "nat"}) || secs["filter"] != "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n" {
		t.Errorf("splitTables: %v %q", order, secs)
	}
	if got := proxyChains([]byte(save)); !slices.Equal(got, []string{"KPR-SERVICES", "KUBE-MARK-MASQ"}) {
		t.Errorf("proxyChains = %v", got)
	}
	m := parseNFTTables("table ip nat\ntable ip6 filter\ntable inet other\n")
	if !slices.Equal(m["ip"], []string{"nat"}) || !slices.Equal(m["ip6"], []string{"filter"}) {
		t.Errorf("parseNFTTables = %v", m)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if q := Quantile(xs, 0.5); q != 3 {
		t.Errorf("median = %v", q)
	}
	if q := Quantile(xs, 0.9); math.Abs(q-4.6) > 1e-9 {
		t.Errorf("p90 = %v", q)
	}
	if Quantile(xs, 0) != 1 || Quantile(xs, 1) != 5 {
		t.Error("min/max")
	}
	if xs[0] != 5 {
		t.Error("Quantile sorted its input")
	}
	if !math.IsNaN(Quantile(nil, 0.5)) || !math.IsNaN(Ratio(1, 0)) {
		t.Error("empty input must be NaN")
	}
	st := SummarizeLatencies([]time.Duration{10 * time.Microsecond, 20 * time.Microsecond, 30 * time.Microsecond}, 1)
	if st.MedianUs != 20 || st.MinUs != 10 || st.Count != 3 || st.Failed != 1 {
		t.Errorf("%+v", st)
	}
}

func TestSelectMetrics(t *testing.T) {
	body := `# HELP kpr_iptables_restore_bytes x
kpr_iptables_restore_bytes_bucket{ip_family="IPv4",sync_kind="full",le="256"} 0
kpr_iptables_restore_bytes_sum{ip_family="IPv4",sync_kind="full"} 3.2e+07
kpr_iptables_restore_bytes_count{ip_family="IPv4",sync_kind="full"} 1
kubeproxy_sync_proxy_rules_duration_seconds_sum 7.5
kubeproxy_sync_proxy_rules_duration_seconds_sum_other 1
`
	m := selectMetrics(body)
	if m[`kpr_iptables_restore_bytes_sum{ip_family="IPv4",sync_kind="full"}`] != 3.2e7 || m["kubeproxy_sync_proxy_rules_duration_seconds_sum"] != 7.5 || len(m) != 3 {
		t.Errorf("selectMetrics = %v", m)
	}
}

func sampleReport() *Report {
	mk := func(backend, proxy string, n int, cold float64, finished bool, fp float64) Result {
		r := Result{Mode: ModeIPTables, Backend: backend, Proxy: proxy, N: n, EndpointsPerService: 10}
		r.ColdSync = ColdSync{Finished: finished, Seconds: cold, TimeoutSeconds: 600}
		r.FirstPacket = &LatencyStats{MedianUs: fp, P90Us: fp * 1.2}
		if finished {
			r.UsageEnd = &ProcUsage{UserSec: 1, SysSec: 0.5, PeakRSSBytes: 100e6}
			if n > 10 {
				r.Changes = &ChangeStats{MedianMs: cold * 10, P90Ms: cold * 12, MedianBytes: 3000, MedianLines: 44}
			}
		}
		r.BaselineOnly = n == 10
		return r
	}
	return &Report{
		Config: Config{EndpointsPerService: 10, BaselineN: 10},
		Results: []Result{
			mk("legacy", "kpr", 10, 0.2, true, 13), mk("legacy", "upstream", 10, 0.6, true, 13),
			mk("legacy", "kpr", 10000, 3, true, 15), mk("legacy", "upstream", 10000, 7.5, true, 170),
			mk("nft", "kpr", 10000, 25, true, 16), mk("nft", "upstream", 10000, 0, false, 0),
		},
		Skipped: []string{"IPVS mode: no IPVS."},
	}
}

func TestMarkdown(t *testing.T) {
	md := sampleReport().Markdown()
	for _, want := range []string{
		"| cold full sync (s) | legacy | 3.00 | 7.50 | 0.40× |",
		"| cold full sync (s) | nft | 25.00 | did not finish in 10m0s | < 0.042× |",
		"| first packet at 10k ÷ at 10 Services | legacy | 1.15× (13 → 15 µs) | 13.08× (13 → 170 µs) | |",
		"**Skipped:** IPVS mode: no IPVS.",
		"## iptables mode, nf_tables backend (iptables-nft)",
		"| 10k | one-change latency, median (ms) | 30.0 | 75.0 | 0.40× |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	// Baseline-only rows carry no one-change figures.
	if strings.Contains(md, "| 10 | one-change latency") {
		t.Error("baseline N shows one-change latency")
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	rep := sampleReport()
	svg := RenderSVG("kpr <vs> upstream & co", rep.Panels())
	d := xml.NewDecoder(strings.NewReader(svg))
	rects := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart.svg is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if !strings.Contains(svg, "DNF") || !strings.Contains(svg, "kpr &lt;vs&gt; upstream &amp; co") {
		t.Error("chart lacks the DNF bar or the escaped title")
	}
	if rects < 10 {
		t.Errorf("only %d rects drawn", rects)
	}
	empty := RenderSVG("empty", []Panel{{Title: "nothing", Unit: "s"}})
	if !strings.Contains(empty, "no data") {
		t.Error("an empty panel should say so")
	}
}
