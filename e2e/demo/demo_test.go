package main

import (
	"context"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

// TestDemo runs `make demo`'s show without holding the cluster up, so the
// demo cannot rot: every request must be answered, the ClusterIP by all
// three pods, and the hint must name the run's real namespaces.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the demo (a full cluster) in -short mode")
	}
	var out strings.Builder
	res := run(context.Background(), t, config{Requests: 6, Printer: &printer{out: &out}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("demo output:\n%s", out.String())
		}
	})

	if len(res.Pods) != numPods {
		t.Fatalf("pods %v, want %d", res.Pods, numPods)
	}
	if miss := res.ClusterIP.missing(res.Pods); len(miss) > 0 {
		t.Errorf("ClusterIP: pods %v never answered (%s)", miss, res.ClusterIP)
	}
	if len(res.NodePort) != 2 {
		t.Errorf("NodePort tried via %d nodes, want 2", len(res.NodePort))
	}
	for node, got := range res.NodePort {
		if n := total(got); n != 3 {
			t.Errorf("NodePort via %s: %d answers, want 3", node, n)
		}
	}
	if n := total(res.LoadBalancer); n != 6 {
		t.Errorf("LoadBalancer: %d answers, want 6", n)
	}
	for _, pod := range append(append([]string{}, keys(res.ClusterIP)...), keys(res.LoadBalancer)...) {
		if !strings.HasPrefix(pod, "echo-") {
			t.Errorf("answer from unexpected server %q", pod)
		}
	}
	h := res.Hint.render()
	for _, n := range res.Hint.Nodes {
		if !strings.HasPrefix(n.NS, framework.NSPrefix) || !strings.Contains(h, n.NS) {
			t.Errorf("hint does not name node %s's namespace %q:\n%s", n.Name, n.NS, h)
		}
	}
	if n1 := c0(res); !strings.Contains(h, "ip netns exec "+n1+" ") {
		t.Errorf("hint has no command for node1's namespace %q:\n%s", n1, h)
	}
	if !strings.Contains(out.String(), "[4/5]") {
		t.Errorf("demo output lacks the traffic section:\n%s", out.String())
	}
}

func total(t tally) int {
	n := 0
	for _, c := range t {
		n += c
	}
	return n
}

func keys(t tally) []string {
	var out []string
	for k := range t {
		out = append(out, k)
	}
	return out
}

func c0(res *result) string {
	if len(res.Hint.Nodes) == 0 {
		return "(no nodes)"
	}
	return res.Hint.Nodes[0].NS
}
