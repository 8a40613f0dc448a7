package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// printer writes the demo's narrative: numbered sections and indented lines.
type printer struct {
	mu  sync.Mutex
	out io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, format, args...)
}

func (p *printer) section(n, of int, title string) { p.printf("\n[%d/%d] %s\n", n, of, title) }
func (p *printer) line(format string, args ...any) { p.printf("      "+format+"\n", args...) }

// tally counts answers per pod.
type tally map[string]int

// String lists pods by name with their counts: "echo-1 ×2, echo-2 ×3".
func (t tally) String() string {
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s ×%d", n, t[n]))
	}
	return strings.Join(parts, ", ")
}

// missing returns the pods in want that have no answer yet, in want's order.
func (t tally) missing(want []string) []string {
	var out []string
	for _, w := range want {
		if t[w] == 0 {
			out = append(out, w)
		}
	}
	return out
}

// round shortens a duration for display: milliseconds under a second,
// tenths of seconds above.
func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// progressCore is a zap core that turns the harness's "step done" log
// entries into one progress line each (the full harness log goes to a file
// through another core).
type progressCore struct {
	zapcore.LevelEnabler
	p      *printer
	fields []zapcore.Field
}

func (c *progressCore) With(fields []zapcore.Field) zapcore.Core {
	return &progressCore{LevelEnabler: c.LevelEnabler, p: c.p, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c *progressCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == "step done" && c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *progressCore) Write(_ zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	step, _ := enc.Fields["step"].(string)
	took, _ := enc.Fields["took"].(time.Duration)
	c.p.line("%-20s %s", step, round(took))
	return nil
}

func (c *progressCore) Sync() error { return nil }

// hint is what the poke-around text needs: real namespace names, addresses,
// paths and which tools exist.
type hint struct {
	Nodes []hintNode
	// OutsideNS, ControlPlaneNS are namespace names.
	OutsideNS, ControlPlaneNS string
	// ClusterIPs are the Service's ClusterIPs (IPv4 first); Port its port.
	ClusterIPs []string
	Port       int32
	NodePort   int32
	LBIP       string
	// IPTablesSave is the command that shows the backend kpr programmed
	// ("iptables-save" or e.g. "iptables-legacy-save").
	IPTablesSave string
	// Kubectl says kubectl is installed; Curl that curl is.
	Kubectl, Curl bool
	// AdminKubeconfig, AdminTokenFile, CAFile are for talking to the API.
	AdminKubeconfig, AdminTokenFile, CAFile string
	// EchoBin is the echo client/server binary.
	EchoBin    string
	APIServer  string
	RunDir     string
	LogDir     string
	NSPrefix   string
	MetricPort int
}

type hintNode struct {
	Name, NS, IP string
}

// render builds the poke-around text. Commands are meant to be pasted into
// another root shell as they are.
func (h hint) render() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	n1 := h.Nodes[0]
	get := func(ns, url string) string {
		if h.Curl {
			return fmt.Sprintf("ip netns exec %s curl -s %s", ns, url)
		}
		host := strings.TrimPrefix(url, "http://")
		host = strings.TrimSuffix(host, "/")
		return fmt.Sprintf("ip netns exec %s %s dial --proto=http --addr=%s", ns, h.EchoBin, host)
	}
	hostPort := func(ip string, port int32) string {
		if strings.Contains(ip, ":") {
			return fmt.Sprintf("[%s]:%d", ip, port)
		}
		return fmt.Sprintf("%s:%d", ip, port)
	}

	w("The cluster stays up until you press Ctrl-C. Poke around from another root shell:")
	w("")
	w("  # the network namespaces (nodes, pods, outside client, control plane, router, wire)")
	w("  ip netns list | grep %s", h.NSPrefix)
	for _, n := range h.Nodes {
		w("  #   %-8s %s (%s)", n.Name, n.NS, n.IP)
	}
	w("  #   outside  %s (198.51.100.10)", h.OutsideNS)
	w("  #   control  %s (apiserver %s)", h.ControlPlaneNS, h.APIServer)
	w("")
	w("  # the NAT rules kpr programmed on %s", n1.Name)
	w("  ip netns exec %s %s -t nat | grep KPR", n1.NS, h.IPTablesSave)
	w("")
	w("  # kpr's own view of the Service: the rules it programmed for default/echo")
	if !h.Curl {
		w("  # (needs curl: apt-get install curl)")
	}
	w("  ip netns exec %s curl -s http://%s:%d/debug/kpr/service/default/echo", n1.NS, n1.IP, h.MetricPort)
	w("")
	w("  # the Service from a node (ClusterIP), and from outside (NodePort on each node, LoadBalancer)")
	for _, ip := range h.ClusterIPs {
		w("  %s", get(n1.NS, "http://"+hostPort(ip, h.Port)+"/"))
	}
	for _, n := range h.Nodes {
		w("  %s", get(h.OutsideNS, "http://"+hostPort(n.IP, h.NodePort)+"/"))
	}
	if h.LBIP != "" {
		w("  %s", get(h.OutsideNS, "http://"+hostPort(h.LBIP, h.Port)+"/"))
	}
	w("")
	w("  # the Kubernetes API: it listens on %s, reachable only from the cluster's", h.APIServer)
	w("  # namespaces (control plane, nodes), never from this root namespace")
	kubectl := fmt.Sprintf("ip netns exec %s kubectl --kubeconfig %s", h.ControlPlaneNS, h.AdminKubeconfig)
	curlAPI := fmt.Sprintf("ip netns exec %s curl -s --cacert %s -H \"Authorization: Bearer $(cat %s)\"", h.ControlPlaneNS, h.CAFile, h.AdminTokenFile)
	if h.Kubectl {
		w("  %s get nodes,pods,svc,endpointslices -o wide", kubectl)
		w("  # then try: keep the client's own address (only pods on the entry node answer a NodePort)")
		w("  %s patch svc echo -p '{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}'", kubectl)
		w("  # or take echo-2 out of the Service (kpr drops its rules; the ClusterIP stops picking it)")
		w("  %s label pod echo-2 app-", kubectl)
	} else {
		w("  # kubectl is not installed; with it this would be:")
		w("  #   %s get pods,svc,endpointslices -o wide", kubectl)
		w("  # the raw API works with curl and the admin token:")
		w("  %s %s/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", curlAPI, h.APIServer)
		w("  # then try: keep the client's own address (only pods on the entry node answer a NodePort)")
		w("  %s -X PATCH -H 'Content-Type: application/merge-patch+json' -d '{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}' %s/api/v1/namespaces/default/services/echo", curlAPI, h.APIServer)
		w("  # and the echo client talks to the Service without curl:")
		w("  ip netns exec %s %s dial --proto=http --addr=%s", h.OutsideNS, h.EchoBin, hostPort(n1.IP, h.NodePort))
	}
	w("")
	w("  # the run directory: kubeconfigs, certificates, and a log per process (kpr's: logs/proxy-<node>.log)")
	w("  ls %s %s", h.RunDir, h.LogDir)
	w("  tail -f %s/proxy-%s.log", h.LogDir, n1.Name)
	w("")
	w("Press Ctrl-C to tear everything down (namespaces, processes; the run directory stays: %s).", h.RunDir)
	return b.String()
}
