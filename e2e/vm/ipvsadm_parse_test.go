package vm

import (
	"net/netip"
	"strings"
	"testing"
)

// Real `ipvsadm -Ln` output from the guest (upstream kube-proxy, during the
// GracefulTermination scenario), plus session affinity, IPv6 and FWM lines.
const ipvsadmSample = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.19.192.1:443 rr
  -> 192.0.2.2:6443               Masq    1      0          0         
TCP  198.19.196.37:80 rr
  -> 198.18.1.17:8080             Masq    0      1          0         
  -> 198.18.1.18:8080             Masq    1      0          3         
TCP  198.19.200.5:80 rr persistent 600
  -> 198.18.1.12:8080             Masq    1      0          20        
UDP  198.19.238.130:8053 rr
TCP  [2001:db8:20::a]:80 mh flag-1,flag-2
  -> [2001:db8:10:1::5]:8080      Masq    1      0          0
FWM  42 rr
`

func TestParseIPVSAdm(t *testing.T) {
	tbl, err := ParseIPVSAdm(ipvsadmSample)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Services) != 6 {
		t.Fatalf("got %d services, want 6: %+v", len(tbl.Services), tbl.Services)
	}
	vs := tbl.Find("TCP", netip.MustParseAddrPort("198.19.196.37:80"))
	if vs == nil || vs.Scheduler != "rr" || len(vs.Reals) != 2 {
		t.Fatalf("TCP 198.19.196.37:80 = %+v", vs)
	}
	old := vs.Real(netip.MustParseAddrPort("198.18.1.17:8080"))
	if old == nil || old.Weight != 0 || old.ActiveConn != 1 || old.InActConn != 0 || old.Forward != "Masq" {
		t.Errorf("draining real server = %+v", old)
	}
	if r := vs.Real(netip.MustParseAddrPort("198.18.1.18:8080")); r == nil || r.Weight != 1 || r.InActConn != 3 {
		t.Errorf("second real server = %+v", r)
	}
	if got := tbl.Find("TCP", netip.MustParseAddrPort("198.19.200.5:80")); got == nil || got.Persistent != 600 {
		t.Errorf("persistent service = %+v", got)
	}
	if got := tbl.Find("UDP", netip.MustParseAddrPort("198.19.238.130:8053")); got == nil || len(got.Reals) != 0 {
		t.Errorf("UDP service without reals = %+v", got)
	}
	v6 := tbl.Find("TCP", netip.MustParseAddrPort("[2001:db8:20::a]:80"))
	if v6 == nil || v6.Scheduler != "mh" || v6.Flags != "flag-1,flag-2" || v6.RealAddrs()[0] != "[2001:db8:10:1::5]:8080" {
		t.Errorf("IPv6 service = %+v", v6)
	}
	if fwm := tbl.Services[5]; fwm.Proto != "FWM" || fwm.Mark != 42 {
		t.Errorf("FWM service = %+v", fwm)
	}
	if tbl.Find("TCP", netip.MustParseAddrPort("198.19.0.1:80")) != nil {
		t.Error("Find of an absent service returned one")
	}
}

// Shape ignores connection counters and order, and sees weights.
func TestIPVSShape(t *testing.T) {
	a, err := ParseIPVSAdm(ipvsadmSample)
	if err != nil {
		t.Fatal(err)
	}
	counters := strings.Replace(ipvsadmSample, "Masq    1      0          3", "Masq    1      7          9", 1)
	b, err := ParseIPVSAdm(counters)
	if err != nil {
		t.Fatal(err)
	}
	if a.Shape() != b.Shape() {
		t.Errorf("Shape differs on counters only:\n%s\n---\n%s", a.Shape(), b.Shape())
	}
	weight := strings.Replace(ipvsadmSample, "198.18.1.17:8080             Masq    0", "198.18.1.17:8080             Masq    1", 1)
	c, err := ParseIPVSAdm(weight)
	if err != nil {
		t.Fatal(err)
	}
	if a.Shape() == c.Shape() {
		t.Error("Shape did not change with a weight")
	}
	only := a.Filter(func(v *VirtualServer) bool { return v.Proto == "UDP" })
	if len(only.Services) != 1 {
		t.Errorf("Filter kept %d services, want 1", len(only.Services))
	}
}

func TestParseIPVSAdmRejectsGarbage(t *testing.T) {
	for _, bad := range []string{
		"  -> 198.18.1.1:80 Masq 1 0 0\n",                    // real server before a service
		"TCP  198.19.0.1:80 rr\n  -> 198.18.1.1:80 Masq 1\n", // short real server line
		"TCP  nonsense rr\n",
		"TCP  198.19.0.1:80 rr persistent soon\n",
		"what is this\n",
		"FWM  x rr\n",
	} {
		if _, err := ParseIPVSAdm(bad); err == nil {
			t.Errorf("ParseIPVSAdm(%q): no error", bad)
		}
	}
}

func TestMetricSamples(t *testing.T) {
	text := `# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] ...
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 0
kubeproxy_sync_proxy_rules_last_timestamp_seconds_total 3
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 12.5
`
	got := metricSamples(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
	if len(got) != 2 || got[`{ip_family="IPv4"}`] != 1.7e9 || got[`{ip_family="IPv6"}`] != 0 {
		t.Errorf("samples = %v", got)
	}
	if v, ok := metricValue(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"); !ok || v != 1.7e9 {
		t.Errorf("metricValue = %v %v, want the positive sample", v, ok)
	}
	if q := metricSamples(text, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"); q[""] != 12.5 {
		t.Errorf("unlabelled sample = %v", q)
	}
	if _, ok := metricValue(text, "absent"); ok {
		t.Error("absent metric found")
	}
}
