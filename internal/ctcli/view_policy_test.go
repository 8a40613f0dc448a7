package ctcli

import (
	"testing"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/endpoints"
)

// The proxy's JSON carries traffic policies and hints, so a View built from
// it selects the same endpoints the proxy uses.
func TestViewFromSnapshotViewKeepsPolicies(t *testing.T) {
	sv := &app.SnapshotView{Node: "node1", NodeZone: "zone-a", Services: []app.ServiceView{{
		Namespace: "ns", Name: "itp", Protocol: "UDP", Family: "IPv4", ClusterIP: "198.19.192.9", ServicePort: 53,
		InternalPolicyLocal: true,
		Endpoints: []app.EndpointView{
			{IP: "198.18.1.9", Port: 53, Ready: true, Serving: true, Node: "node1", Local: true},
			{IP: "198.18.2.9", Port: 53, Ready: true, Serving: true, Node: "node2"},
		},
	}}}
	v, err := ViewFromSnapshotView(sv, "proxy")
	if err != nil {
		t.Fatal(err)
	}
	fv := v.Families[0]
	if fv.Node.Zone != "zone-a" {
		t.Errorf("node zone lost: %+v", fv.Node)
	}
	for name, sp := range fv.Snapshot.Services {
		if !sp.InternalPolicyLocal {
			t.Fatal("internalTrafficPolicy Local lost")
		}
		c := endpoints.Categorize(fv.Snapshot.Endpoints[name], sp, fv.Node)
		if len(c.AllReachable) != 1 || c.AllReachable[0].IP.String() != "198.18.1.9" {
			t.Errorf("reachable = %v, want only the local endpoint", c.AllReachable)
		}
	}
}
