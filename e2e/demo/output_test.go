package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestTally(t *testing.T) {
	got := tally{"echo-2": 3, "echo-1": 1}
	if s := got.String(); s != "echo-1 ×1, echo-2 ×3" {
		t.Fatalf("String() = %q", s)
	}
	if m := got.missing([]string{"echo-1", "echo-2", "echo-3"}); len(m) != 1 || m[0] != "echo-3" {
		t.Fatalf("missing = %v, want [echo-3]", m)
	}
	if m := got.missing(nil); len(m) != 0 {
		t.Fatalf("missing(nil) = %v, want none", m)
	}
}

func TestRound(t *testing.T) {
	for in, want := range map[time.Duration]string{
		1234567 * time.Nanosecond: "1ms",
		340 * time.Millisecond:    "340ms",
		6123 * time.Millisecond:   "6.1s",
	} {
		if got := round(in).String(); got != want {
			t.Errorf("round(%v) = %s, want %s", in, got, want)
		}
	}
}

func sampleHint() hint {
	return hint{
		Nodes: []hintNode{
			{Name: "node1", NS: "kpre2e-42-ab12-node1", IP: "192.0.2.11"},
			{Name: "node2", NS: "kpre2e-42-ab12-node2", IP: "192.0.2.12"},
		},
		OutsideNS:       "kpre2e-42-ab12-outside",
		ControlPlaneNS:  "kpre2e-42-ab12-cp",
		ClusterIPs:      []string{"198.19.200.7", "2001:db8:20::7"},
		Port:            80,
		NodePort:        31234,
		LBIP:            "203.0.113.10",
		IPTablesSave:    "iptables-legacy-save",
		AdminKubeconfig: "/run/x/admin.kubeconfig",
		AdminTokenFile:  "/run/x/admin.token",
		CAFile:          "/run/x/pki/ca.crt",
		EchoBin:         "/e2e/_cache/bin/echo",
		APIServer:       "https://192.0.2.2:6443",
		RunDir:          "/run/x",
		LogDir:          "/run/x/logs",
		NSPrefix:        "kpre2e-42-",
		MetricPort:      10249,
	}
}

func TestHintUsesRealNames(t *testing.T) {
	h := sampleHint()
	h.Kubectl, h.Curl = true, true
	out := h.render()
	for _, want := range []string{
		"ip netns list | grep kpre2e-42-",
		"ip netns exec kpre2e-42-ab12-node1 iptables-legacy-save -t nat | grep KPR",
		"ip netns exec kpre2e-42-ab12-node1 curl -s http://192.0.2.11:10249/debug/kpr/service/default/echo",
		"ip netns exec kpre2e-42-ab12-node1 curl -s http://198.19.200.7:80/",
		"ip netns exec kpre2e-42-ab12-node1 curl -s http://[2001:db8:20::7]:80/",
		"ip netns exec kpre2e-42-ab12-outside curl -s http://192.0.2.11:31234/",
		"ip netns exec kpre2e-42-ab12-outside curl -s http://192.0.2.12:31234/",
		"ip netns exec kpre2e-42-ab12-outside curl -s http://203.0.113.10:80/",
		"ip netns exec kpre2e-42-ab12-cp kubectl --kubeconfig /run/x/admin.kubeconfig get",
		"ip netns exec kpre2e-42-ab12-cp kubectl --kubeconfig /run/x/admin.kubeconfig patch svc echo -p '{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}'",
		"ip netns exec kpre2e-42-ab12-cp kubectl --kubeconfig /run/x/admin.kubeconfig label pod echo-2 app-",
		"tail -f /run/x/logs/proxy-node1.log",
		"Ctrl-C",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("hint lacks %q:\n%s", want, out)
		}
	}
}

func TestHintWithoutKubectlOrCurl(t *testing.T) {
	out := sampleHint().render()
	for _, want := range []string{
		"kubectl is not installed",
		"ip netns exec kpre2e-42-ab12-cp curl -s --cacert /run/x/pki/ca.crt -H \"Authorization: Bearer $(cat /run/x/admin.token)\" https://192.0.2.2:6443/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
		"-X PATCH -H 'Content-Type: application/merge-patch+json' -d '{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}' https://192.0.2.2:6443/api/v1/namespaces/default/services/echo",
		"ip netns exec kpre2e-42-ab12-outside /e2e/_cache/bin/echo dial --proto=http --addr=192.0.2.11:31234",
		"ip netns exec kpre2e-42-ab12-node1 /e2e/_cache/bin/echo dial --proto=http --addr=[2001:db8:20::7]:80",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("hint lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "curl -s http://192.0.2.12:31234/") {
		t.Errorf("hint offers curl for Service traffic although curl is missing:\n%s", out)
	}
}

func TestProgressCorePrintsOnlySteps(t *testing.T) {
	var buf bytes.Buffer
	log := zap.New(&progressCore{LevelEnabler: zapcore.InfoLevel, p: &printer{out: &buf}})
	log.Info("process started", zap.String("name", "etcd"))
	log.With(zap.String("cluster", "x")).Info("step done", zap.String("step", "control plane"), zap.Duration("took", 2345*time.Millisecond))
	log.Debug("step done", zap.String("step", "hidden"))
	if got, want := buf.String(), "      control plane        2.3s\n"; got != want {
		t.Fatalf("progress output %q, want %q", got, want)
	}
}
