package swapin

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// Ports of the upstream kube-proxy being replaced. kpr reads kubeadm's
// ConfigMap and so binds kube-proxy's defaults (health 10256, metrics
// 10249); two processes cannot bind the same port, so the old kube-proxy
// gets others here. (On a real node the new pod's servers must wait for the
// old pod's ports: see the report to the lead.)
const (
	kubeProxyMetricsPort = 10349
	kubeProxyHealthzPort = 10356
	// kubeProxySyncPeriod is short so that kube-proxy, still running after
	// the takeover, notices its canary is gone and puts its rules back
	// within seconds (with its default 30 s the test would wait that long).
	kubeProxySyncPeriod = "3s"
)

// TestTakeover replaces a running upstream kube-proxy with kpr on every
// node while requests flow, on each iptables backend and with kube-proxy on
// the backend the kubelet no longer uses; and checks the dry run first.
func TestTakeover(t *testing.T) {
	e := newEnv(t)
	w := e.createWeb(t)
	t.Run("DryRunRemovesNothing", func(t *testing.T) { e.testDryRun(t, w) })
	for _, tc := range []struct{ name, kubeProxy, kubelet string }{
		{"nft", "nft", "nft"},
		{"legacy", "legacy", "legacy"},
		{"KubeProxyOnLegacyKubeletOnNFT", "legacy", "nft"},
	} {
		t.Run(tc.name, func(t *testing.T) { e.testTakeover(t, w, tc.kubeProxy, tc.kubelet) })
	}
}

// kubeletRules are the chains kubelet v1.37 keeps in each family (the
// hint and canaries; KUBE-FIREWALL's martian-packet rule for IPv4), as it
// would have made them on the node before kube-proxy ran.
const kubeletRulesV4 = `*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-I INPUT -j KUBE-FIREWALL
-I OUTPUT -j KUBE-FIREWALL
COMMIT
`

const kubeletRulesV6 = `*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
`

// kubeletLines are the lines of kubelet's that must survive the takeover,
// as iptables-save prints them.
var kubeletLines = []string{
	":KUBE-IPTABLES-HINT - [0:0]",
	":KUBE-KUBELET-CANARY - [0:0]",
	":KUBE-FIREWALL - [0:0]",
	"-A INPUT -j KUBE-FIREWALL",
	"-A OUTPUT -j KUBE-FIREWALL",
	`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
}

// resetNodes stops nothing but empties every node's tables, so a subtest
// starts from a node with no proxy rules.
func (e *env) resetNodes(t *testing.T) {
	t.Helper()
	for _, n := range e.c.Nodes() {
		wipeIPTables(t, n)
	}
}

// startKubeProxy runs upstream kube-proxy v1.37 on every node on the given
// iptables backend and waits for its first sync.
func (e *env) startKubeProxy(t *testing.T, backend string) []*framework.Proxy {
	t.Helper()
	bin, err := e.c.ProxyBinary(framework.ProxyUpstream)
	if err != nil {
		t.Fatal(err)
	}
	var out []*framework.Proxy
	for _, n := range e.c.Nodes() {
		p := n.StartProxy(t, framework.ProxySpec{
			Binary: bin, Name: "kube-proxy-" + n.Name, Env: e.c.IPTablesBackendEnv(t, backend),
			Args: []string{
				"--kubeconfig=" + e.c.AdminKubeconfig, "--hostname-override=" + n.Name, "--proxy-mode=iptables",
				"--cluster-cidr=" + framework.ClusterCIDRFlag(),
				fmt.Sprintf("--metrics-bind-address=0.0.0.0:%d", kubeProxyMetricsPort),
				fmt.Sprintf("--healthz-bind-address=0.0.0.0:%d", kubeProxyHealthzPort),
				"--iptables-sync-period=" + kubeProxySyncPeriod,
				"--conntrack-max-per-core=0", "--v=2",
			},
		})
		out = append(out, p)
	}
	for _, p := range out {
		waitSynced(t, p, framework.AddrPort(p.Node.IPv4, kubeProxyMetricsPort), 60*time.Second)
		// The metric says one family synced; wait for both, and for the
		// rules to settle (the same chains in two reads a second apart).
		prev := ""
		framework.Eventually(t, 60*time.Second, "kube-proxy's rules settled on "+p.Node.Name, func(context.Context) error {
			cur := strings.Join(kubeProxyChains(save(t, p.Node, backend)), " ")
			defer func() { prev = cur }()
			for _, tool := range []string{"iptables", "ip6tables"} {
				out := p.Node.MustExec(t, tool+"-"+backend+"-save")
				if !strings.Contains(out, ":KUBE-SERVICES ") || !strings.Contains(out, ":KUBE-SVC-") {
					return fmt.Errorf("%s-%s has no Service chains yet", tool, backend)
				}
			}
			if cur != prev {
				return fmt.Errorf("still changing")
			}
			return nil
		})
	}
	return out
}

func (e *env) installKubeletChains(t *testing.T, backend string) {
	t.Helper()
	for _, n := range e.c.Nodes() {
		loadRules(t, n, backend, kubeletRulesV4, kubeletRulesV6)
	}
}

// testDryRun: with --takeover-dry-run kpr prints (and logs) the plan and
// removes nothing; kube-proxy's chains are all still there afterwards.
func (e *env) testDryRun(t *testing.T, w *web) {
	e.resetNodes(t)
	e.installKubeletChains(t, "nft")
	kps := e.startKubeProxy(t, "nft")
	n := e.c.Node(0)
	before := kubeProxyChains(save(t, n, "nft"))
	if len(before) < 10 {
		t.Fatalf("kube-proxy made only %d chains on %s: %v", len(before), n.Name, before)
	}
	p := e.startKpr(t, 0, nil, "--takeover-dry-run")
	waitSynced(t, p, kprMetrics, 60*time.Second)
	var plan []string
	framework.Eventually(t, 30*time.Second, "the dry-run plan in kpr's output", func(context.Context) error {
		plan = nil
		for _, l := range logLines(t, p) {
			if strings.HasPrefix(l, "kube-proxy takeover:") || strings.HasPrefix(l, "  remove ") || strings.HasPrefix(l, "  keep ") {
				plan = append(plan, l)
			}
		}
		if len(plan) == 0 {
			return fmt.Errorf("no plan printed yet")
		}
		return nil
	})
	t.Logf("dry-run plan on %s (%d lines), first lines:\n%s", n.Name, len(plan), strings.Join(plan[:min(len(plan), 8)], "\n"))
	for _, want := range []string{
		`  remove rule   iptables nft nat: -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		"  remove chain  iptables nft nat: KUBE-SERVICES (",
		"  remove chain  ip6tables nft nat: KUBE-SERVICES (",
		"  remove chain  iptables nft mangle: KUBE-PROXY-CANARY (",
	} {
		if !slices.ContainsFunc(plan, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("the plan lacks %q", want)
		}
	}
	for _, l := range plan {
		for _, never := range []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KPR-"} {
			if strings.Contains(l, never) {
				t.Errorf("the plan would touch %s: %s", never, l)
			}
		}
	}
	if logs := jsonLogs(t, p, "takeover: dry run: would remove"); len(logs) == 0 {
		t.Errorf("no structured dry-run log line")
	}
	// Nothing removed: every chain kube-proxy had is still there, and kpr
	// never ran a real takeover.
	after := kubeProxyChains(save(t, n, "nft"))
	if !slices.Equal(before, after) {
		t.Errorf("kube-proxy's chains changed in a dry run:\nbefore %v\nafter  %v", before, after)
	}
	if l := jsonLogs(t, p, "takeover: removed"); len(l) > 0 {
		t.Errorf("a dry run removed something: %v", l)
	}
	p.Stop(t)
	for _, kp := range kps {
		kp.Stop(t)
	}
}

// testTakeover is the migration on every node under load: kube-proxy
// serves, kpr starts with --takeover-kube-proxy (from its DaemonSet), the
// still-running kube-proxy puts its rules back and kpr removes them again,
// kube-proxy stops; no request fails, kube-proxy's chains are gone from
// both backends and kubelet's are untouched.
func (e *env) testTakeover(t *testing.T, w *web, kubeProxyBackend, kubeletBackend string) {
	e.resetNodes(t)
	e.installKubeletChains(t, kubeletBackend)
	kps := e.startKubeProxy(t, kubeProxyBackend)
	e.checkTraffic(t, w)
	for _, n := range e.c.Nodes() {
		if got := kubeProxyChains(save(t, n, kubeProxyBackend)); len(got) < 10 {
			t.Fatalf("kube-proxy made only %d chains on %s", len(got), n.Name)
		}
	}

	streams := []stream{
		{"ClusterIP from node1", e.c.Node(0).NetNS, framework.AddrPort(w.clusterIP(false), 80)},
		{"ClusterIP from a pod on node1", w.client.NetNS, framework.AddrPort(w.clusterIP(false), 80)},
		{"NodePort via node1 from outside", e.c.Outside().NetNS, framework.AddrPort(e.c.Node(0).IPv4, w.nodePort)},
		{"NodePort via node2 from outside", e.c.Outside().NetNS, framework.AddrPort(e.c.Node(1).IPv4, w.nodePort)},
	}
	if v6 := w.clusterIP(true); v6.IsValid() {
		streams = append(streams, stream{"IPv6 ClusterIP from node2", e.c.Node(1).NetNS, framework.AddrPort(v6, 80)})
	}
	l := startLoad(streams)
	stopped := false
	defer func() {
		if !stopped {
			l.Stop()
		}
	}()
	// A connection opened through kube-proxy's rules must survive the
	// whole swap (conntrack keeps its NAT).
	long := openLongLived(t, w.client.NetNS, framework.AddrPort(w.clusterIP(false), 80))
	defer long.Close()

	var kprs []*framework.Proxy
	for i := range e.c.Nodes() {
		kprs = append(kprs, e.startKpr(t, i, nil))
	}
	firstDone := map[string]time.Duration{}
	for _, p := range kprs {
		var first jsonLog
		framework.Eventually(t, 60*time.Second, p.Name+": first takeover", func(context.Context) error {
			if !p.Running() {
				return fmt.Errorf("%s exited:\n%s", p.Name, p.Tail(30))
			}
			for _, m := range jsonLogs(t, p, "takeover: removed") {
				if m["first"] == true {
					first = m
					return nil
				}
			}
			return fmt.Errorf("not yet")
		})
		firstDone[p.Node.Name] = logTime(t, first).Sub(processStart(t, p))
		if n, _ := first["chains_removed"].(float64); n < 10 {
			t.Errorf("%s: first takeover removed only %v chains: %v", p.Name, n, first)
		}
		t.Logf("%s: %s, %s after kpr started", p.Node.Name, first.msg(), firstDone[p.Node.Name].Round(time.Millisecond))
	}

	// kube-proxy is still running: it sees its canary gone within its sync
	// period and puts everything back, its jumps first again. kpr's guard
	// must notice and remove them again.
	framework.Eventually(t, 90*time.Second, "kpr removes the rules a still-running kube-proxy put back", func(context.Context) error {
		for _, p := range kprs {
			back := jsonLogs(t, p, "takeover: kube-proxy's rules were back on this node")
			if len(back) == 0 {
				return fmt.Errorf("%s: kube-proxy's rules were not found and removed again yet", p.Node.Name)
			}
			if back[0]["level"] != "warn" {
				t.Errorf("%s: kube-proxy still running is not a warning: %v", p.Node.Name, back[0])
			}
		}
		return nil
	})
	if sent, failed := l.counts(); failed > 0 {
		t.Errorf("%d of %d requests failed while both proxies ran", failed, sent)
	}

	// The DaemonSet is deleted: kube-proxy stops (its rules stay, as on a
	// real node, until kpr removes them). The worst moment: right after it
	// put its rules back ahead of kpr's once more.
	framework.Eventually(t, 60*time.Second, "kube-proxy's rules back on node1 once more", func(context.Context) error {
		if len(kubeProxyChains(save(t, e.c.Node(0), kubeProxyBackend))) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	stopAt := time.Now()
	for _, kp := range kps {
		kp.Stop(t)
	}
	gone := map[string]time.Duration{}
	for _, n := range e.c.Nodes() {
		framework.Eventually(t, 60*time.Second, "kube-proxy's chains gone from "+n.Name, func(context.Context) error {
			for _, b := range []string{"legacy", "nft"} {
				if left := kubeProxyChains(save(t, n, b)); len(left) > 0 {
					return fmt.Errorf("%s still has %d: %v", b, len(left), left[:min(5, len(left))])
				}
			}
			return nil
		})
		gone[n.Name] = time.Since(stopAt)
	}
	// Some more traffic on kpr alone, then the verdict.
	sentBefore, _ := l.counts()
	framework.Eventually(t, 30*time.Second, "more requests through kpr alone", func(context.Context) error {
		if sent, _ := l.counts(); sent < sentBefore+100 {
			return fmt.Errorf("%d more so far", sent-sentBefore)
		}
		return nil
	})
	sent, fail := l.Stop()
	stopped = true
	total, failed := 0, 0
	for _, s := range streams {
		total += sent[s.name]
		failed += len(fail[s.name])
		if sent[s.name] == 0 {
			t.Errorf("stream %q sent nothing", s.name)
		}
		if len(fail[s.name]) > 0 {
			t.Errorf("stream %q: %d of %d requests failed, first: %v", s.name, len(fail[s.name]), sent[s.name], fail[s.name][:min(5, len(fail[s.name]))])
		}
	}
	if err := long.check(); err != nil {
		t.Errorf("the connection opened through kube-proxy's rules did not survive the swap: %v", err)
	}

	// kubelet's chains and rules are as kubelet made them.
	for _, n := range e.c.Nodes() {
		s := save(t, n, kubeletBackend)
		for _, line := range kubeletLines {
			if !strings.Contains(s, line+"\n") {
				t.Errorf("%s (%s): kubelet's %q is gone", n.Name, kubeletBackend, line)
			}
		}
	}
	e.checkTraffic(t, w)

	summary := fmt.Sprintf("takeover kube-proxy on %s, kubelet on %s: %d requests over %d streams during the swap, %d failed; "+
		"kpr start → first takeover done: node1 %s, node2 %s; kube-proxy stopped (just after it put its rules back) → its chains gone: node1 %s, node2 %s",
		kubeProxyBackend, kubeletBackend, total, len(streams), failed,
		firstDone["node1"].Round(time.Millisecond), firstDone["node2"].Round(time.Millisecond),
		gone["node1"].Round(time.Millisecond), gone["node2"].Round(time.Millisecond))
	t.Log(summary)
	f, err := os.OpenFile(filepath.Join(e.c.RunDir, "takeover-summary.txt"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, summary)
		f.Close()
	}
	for _, p := range kprs {
		p.Stop(t)
	}
}

// processStart is when the harness started the proxy's current run (its
// log marker).
func processStart(t *testing.T, p *framework.Proxy) time.Time {
	t.Helper()
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if rest, ok := strings.CutPrefix(lines[i], "==== e2e: start #"); ok {
			_, rest, _ = strings.Cut(rest, " at ")
			ts, _, _ := strings.Cut(rest, ": ")
			tm, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				t.Fatal(err)
			}
			return tm
		}
	}
	t.Fatalf("no start marker in %s", p.LogPath)
	return time.Time{}
}

// logTime is a kpr JSON log line's timestamp.
func logTime(t *testing.T, l jsonLog) time.Time {
	t.Helper()
	s, _ := l["ts"].(string)
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line without a time: %v", l)
	}
	return tm
}

// longLived is one TCP connection through a Service kept open across the
// swap.
type longLived struct {
	c net.Conn
	r *bufio.Reader
}

func openLongLived(t *testing.T, from *framework.NetNS, addr string) *longLived {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &longLived{c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := l.r.ReadString('\n'); err != nil { // the echo server's greeting
		t.Fatal(err)
	}
	return l
}

// check sends a line and expects it echoed.
func (l *longLived) check() error {
	_ = l.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := l.c.Write([]byte("still there?\n")); err != nil {
		return err
	}
	got, err := l.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != "still there?\n" {
		return fmt.Errorf("echoed %q", got)
	}
	return nil
}

func (l *longLived) Close() { _ = l.c.Close() }
