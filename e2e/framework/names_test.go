package framework

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOwnerPid(t *testing.T) {
	for name, want := range map[string]int{
		"kpre2e-123-ab12-node1": 123,
		"kpre2e-9-ff-cp":        9,
	} {
		if got, ok := ownerPid(name); !ok || got != want {
			t.Errorf("ownerPid(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
	for _, name := range []string{"kprfz-123-a", "kpre2e-x-node1", "other", "kpre2e-"} {
		if _, ok := ownerPid(name); ok {
			t.Errorf("ownerPid(%q) accepted a name that is not ours", name)
		}
	}
}

func TestPodNSRole(t *testing.T) {
	if got := podNSRole("default", "echo-1"); got != "pod-default-echo-1" {
		t.Errorf("short name: %q", got)
	}
	long1 := podNSRole("some-long-namespace", strings.Repeat("x", 60)+"1")
	long2 := podNSRole("some-long-namespace", strings.Repeat("x", 60)+"2")
	if len(long1) > 40 || long1 == long2 {
		t.Errorf("long names: %q, %q (want <= 40 chars and distinct)", long1, long2)
	}
	if got := podNSRole("Ns", "a.b"); strings.ContainsAny(got, "N.") {
		t.Errorf("unsafe characters kept: %q", got)
	}
}

// Every address the harness hands out must come from the plan.
func TestNodeAddrsStayInPlan(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < maxNodes; i++ {
		name, v4, v6, p4, p6, zone := nodeAddrs(i)
		if !NodeNetV4.Contains(v4) || !NodeNetV6.Contains(v6) || !ClusterCIDRV4.Contains(p4.Addr()) || !ClusterCIDRV6.Contains(p6.Addr()) {
			t.Fatalf("node %d (%s): %s %s %s %s outside the plan", i, name, v4, v6, p4, p6)
		}
		if v4 == RouterIPv4 || v4 == APIServerIPv4 || v6 == RouterIPv6 || v6 == APIServerIPv6 {
			t.Fatalf("node %d collides with router/apiserver", i)
		}
		for _, k := range []string{name, v4.String(), v6.String(), p4.String(), p6.String()} {
			if seen[k] {
				t.Fatalf("node %d: %s is not unique", i, k)
			}
			seen[k] = true
		}
		if zone == "" {
			t.Fatalf("node %d: no zone", i)
		}
	}
	name, v4, v6, p4, p6, zone := nodeAddrs(0)
	if got := fmt.Sprintf("%s %s %s %s %s %s", name, v4, v6, p4, p6, zone); got != "node1 192.0.2.11 2001:db8:1::11 198.18.1.0/24 2001:db8:10:1::/64 zone-a" {
		t.Fatalf("node1 = %s", got)
	}
	if _, v4, v6, p4, p6, zone := nodeAddrs(1); fmt.Sprintf("%s %s %s %s %s", v4, v6, p4, p6, zone) != "192.0.2.12 2001:db8:1::12 198.18.2.0/24 2001:db8:10:2::/64 zone-b" {
		t.Fatalf("node2 = %s %s %s %s %s", v4, v6, p4, p6, zone)
	}
}

func TestAddrCmdsSkipDADForIPv6(t *testing.T) {
	cmds := addrCmds("eth0", withLen(RouterIPv4, NodeNetV4), withLen(RouterIPv6, NodeNetV6))
	want := []string{"addr add 192.0.2.1/24 dev eth0", "addr add 2001:db8:1::1/64 dev eth0 nodad", "link set eth0 up"}
	if strings.Join(cmds, "|") != strings.Join(want, "|") {
		t.Fatalf("addrCmds = %q", cmds)
	}
}

func TestPruneRunsKeepsNewest(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"20260101-000000-1-aa", "20260102-000000-1-aa", "20260103-000000-1-aa"} {
		if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pruneRuns(dir, 2) // make room for one more: keep the newest one
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "20260103-000000-1-aa" {
		t.Fatalf("left %v", ents)
	}
}

func TestMetricValue(t *testing.T) {
	text := "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds x\n" +
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds_total 5\n" +
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e+09\n" +
		"other{a=\"b c\"} 3 1234\n"
	if v, ok := metricValue(text, SyncedMetric); !ok || v != 1.7e9 {
		t.Errorf("synced metric = %v, %v", v, ok)
	}
	if v, ok := metricValue(text, "other"); !ok || v != 3 {
		t.Errorf("labelled metric = %v, %v", v, ok)
	}
	if _, ok := metricValue(text, "missing"); ok {
		t.Error("missing metric found")
	}
}
