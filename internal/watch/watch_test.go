package watch

import (
	"context"
	"reflect"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kpr-proxy/kpr/internal/model"
)

// startFake runs a Watcher against a fake clientset holding objs.
func startFake(t *testing.T, objs ...runtimeObject) (*Watcher, *fake.Clientset, chan struct{}) {
	t.Helper()
	client := fake.NewClientset(objs...)
	syncCh := make(chan struct{}, 1)
	w, err := New(Config{
		Client:   client,
		NodeName: testNode,
		Families: v4,
		Logger:   zaptest.NewLogger(t),
		RequestSync: func() {
			select {
			case syncCh <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); w.Wait() })
	w.Start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := w.WaitForSync(wctx); err != nil {
		t.Fatal(err)
	}
	if !w.Synced() {
		t.Fatal("Synced false after WaitForSync")
	}
	return w, client, syncCh
}

// waitFor takes snapshots (merging them, as a sync loop would keep its
// last one) until ok holds for the latest; the deadline only bounds a hang.
func waitFor(t *testing.T, w *Watcher, syncCh chan struct{}, ok func(*model.Snapshot) bool) *model.Snapshot {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		snap := w.Snapshot().Families[0].Snapshot
		if ok(snap) {
			return snap
		}
		select {
		case <-syncCh:
		case <-deadline:
			t.Fatalf("condition never met; last snapshot has %v", snap.SortedNames())
		}
	}
}

func TestWatcherWithFakeClient(t *testing.T) {
	ctx := context.Background()
	proxyName := func(s *v1.Service) { s.Labels = map[string]string{labelServiceProxyName: "other-proxy"} }
	excludedSvc := svc("ns", "other", "198.19.192.2", proxyName)
	headlessSlice := slice("ns", "h-1", "h", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"})
	headlessSlice.Labels[v1.IsHeadlessService] = ""
	otherSlice := slice("ns", "other-1", "other", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.4"})
	otherSlice.Labels[labelServiceProxyName] = "other-proxy"

	w, client, syncCh := startFake(t,
		svc("ns", "a", "198.19.192.1"),
		slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1", node: testNode}),
		excludedSvc, headlessSlice, otherSlice,
		svc("ns", "h", "None"),
		node(testNode), node(otherNode),
	)
	snap := waitFor(t, w, syncCh, func(s *model.Snapshot) bool { return len(s.Endpoints) > 0 })
	if got := snap.SortedNames(); !reflect.DeepEqual(got, []model.ServicePortName{spn("ns", "a", "http")}) {
		t.Errorf("services = %v", got)
	}
	if len(snap.Endpoints) != 1 || !snap.Endpoints[spn("ns", "a", "http")][0].IsLocal {
		t.Errorf("endpoints = %v", snap.Endpoints)
	}
	nodes, err := w.WaitForNode(ctx, NeedAddresses|NeedPodCIDRs)
	if err != nil || nodes[model.IPv4].Zone != "zone-a" || nodes[model.IPv4].Addresses[0] != addr("192.0.2.10") {
		t.Errorf("node: %v %+v", err, nodes[model.IPv4])
	}

	// Excluded objects arriving through the watch (the fake clientset does
	// not filter watches by label) are dropped by the handlers too.
	ex2 := svc("ns", "other2", "198.19.192.3", proxyName)
	if _, err := client.CoreV1().Services("ns").Create(ctx, ex2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hs2 := headlessSlice.DeepCopy()
	hs2.Name = "h-2"
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, hs2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Sentinels created after them: once they show up, the excluded ones
	// have been handled.
	if _, err := client.CoreV1().Services("ns").Create(ctx, svc("ns", "z", "198.19.192.26"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx,
		slice("ns", "z-1", "z", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.26"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = waitFor(t, w, syncCh, func(s *model.Snapshot) bool {
		return s.Services[spn("ns", "z", "http")] != nil && s.Endpoints[spn("ns", "z", "http")] != nil
	})
	for n := range snap.Services {
		if n.Name != "a" && n.Name != "z" {
			t.Errorf("excluded service present: %v", n)
		}
	}
	for n := range snap.Endpoints {
		if n.Name != "a" && n.Name != "z" {
			t.Errorf("excluded endpoints present: %v", n)
		}
	}

	// Labelling a Service for another proxy removes it.
	// (The fake clientset keeps the resourceVersion it is given; a real
	// apiserver bumps it on every write.)
	a := svc("ns", "a", "198.19.192.1", proxyName, withRV("2"))
	if _, err := client.CoreV1().Services("ns").Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, syncCh, func(s *model.Snapshot) bool { return s.Services[spn("ns", "a", "http")] == nil })

	// Node updates flow through the field-selected informer.
	n := node(testNode)
	n.Labels[v1.LabelTopologyZone] = "zone-c"
	n.ResourceVersion = "2"
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(time.Minute)
	for w.Nodes()[model.IPv4].Zone != "zone-c" {
		select {
		case <-syncCh:
		case <-deadline:
			t.Fatal("node update never arrived")
		}
	}
}

func TestSelectors(t *testing.T) {
	if got := serviceLabelSelector(); got != "!service.kubernetes.io/service-proxy-name" {
		t.Errorf("service selector %q", got)
	}
	if got := sliceLabelSelector(); got != "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name" {
		t.Errorf("slice selector %q", got)
	}
}
