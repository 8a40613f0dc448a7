// Package scenarios is kpr's end-to-end scenario suite. Every scenario runs
// against the proxy chosen by $E2E_PROXY (kpr by default, or upstream
// kube-proxy) in one shared cluster: a real control plane, two nodes, the
// proxy on both nodes started as its DaemonSet would be (manifests/rbac.yaml,
// a ServiceAccount token). Scenarios use their own namespaces, Services and
// pods, and clean them up, so they can share the cluster; disruptive ones
// (proxy restart, iptables flush) run last and leave the proxies healthy.
//
//	cd e2e && E2E_PROXY=kpr go test -count=1 -timeout 30m ./scenarios/
//	cd e2e && E2E_PROXY=upstream go test -count=1 -timeout 30m ./scenarios/
//	go test -count=1 -run 'TestScenarios/ETPLocal' ./scenarios/   # one scenario
package scenarios

import (
	"testing"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

// TestScenarios runs the whole suite in one cluster (start-up is the
// expensive part). The order matters only in that the disruptive scenarios
// come last and RBAC, which reads the logs of the whole run, is the very last.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping e2e scenarios in -short mode")
	}
	e := newEnv(t)
	for _, s := range []scenario{
		{"HealthzAndMetrics", testHealthzAndMetrics},
		{"ClusterIP", testClusterIP},
		{"NodePort", testNodePort},
		{"LoadBalancer", testLoadBalancer},
		{"ExternalIPs", testExternalIPs},
		{"ETPLocal", testETPLocal},
		{"ITPLocal", testITPLocal},
		{"Hairpin", testHairpin},
		{"NoEndpointsReject", testNoEndpointsReject},
		{"SessionAffinity", testSessionAffinity},
		{"PortAddRemove", testPortAddRemove},
		{"IPv6ClusterIP", testIPv6ClusterIP},
		{"TerminatingFallback", testTerminatingFallback},
		{"ChurnUnderLoad", testChurnUnderLoad},
		{"UDPBackendReplaced", testUDPBackendReplaced},
		{"MalformedDoesNotBlock", testMalformedDoesNotBlock},
		{"ProxyRestartKeepsConnections", testProxyRestartKeepsConnections},
		{"IPTablesFlushRepaired", testIPTablesFlushRepaired},
		{"RBACSufficient", testRBACSufficient},
	} {
		e.run(t, s)
	}
}
