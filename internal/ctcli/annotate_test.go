package ctcli

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

func view4(t *testing.T, lines ...string) *View {
	t.Helper()
	snap, err := modeltest.Build(model.IPv4, "node1", lines...)
	if err != nil {
		t.Fatal(err)
	}
	return &View{Source: "test", Node: "node1", Families: []FamilyView{{Snapshot: snap, Node: &model.Node{Name: "node1"}}}}
}

// Two Services sharing an external IP and port: the one whose endpoint
// answered explains the flow.
func TestAnnotateSharedFrontend(t *testing.T) {
	v := view4(t,
		"svc a/one UDP 198.19.192.1:53 externalIPs=203.0.113.5",
		"ep a/one 198.18.1.1:53 ready",
		"svc b/two UDP 198.19.192.2:53 externalIPs=203.0.113.5",
		"ep b/two 198.18.1.2:53 ready",
	)
	a := NewAnnotator(v, nil)
	for ep, want := range map[string]string{"198.18.1.1:53": "a/one", "198.18.1.2:53": "b/two", "198.18.9.9:53": "a/one"} {
		fl := flow(udp, "198.51.100.1:1000", "203.0.113.5:53", ep, "198.51.100.1:1000", replied|dnat, 10, 0)
		r, ok := a.Annotate(&fl)
		if !ok || r.Service.String() != want || r.Via != ViaExternalIP {
			t.Errorf("endpoint %s: %v %s via %s, want %s", ep, ok, r.Service, r.Via, want)
		}
	}
}

// A node port counts on this node's addresses only (when they are known),
// and a Service IP match wins over a node port with the same number.
func TestAnnotateNodePort(t *testing.T) {
	v := view4(t,
		"svc a/np UDP 198.19.192.1:53 nodePort=30053",
		"ep a/np 198.18.1.1:53 ready",
		"svc a/other UDP 198.19.192.9:30053",
		"ep a/other 198.18.1.9:30053 ready",
	)
	toNode := flow(udp, "198.51.100.1:1000", "192.0.2.11:30053", "198.18.1.1:53", "192.0.2.11:1000", replied|snatDNAT, 10, 0)
	toOther := flow(udp, "198.51.100.1:1001", "198.51.100.99:30053", "198.51.100.99:30053", "198.51.100.1:1001", replied, 10, 0)
	toSvc := flow(udp, "198.51.100.1:1002", "198.19.192.9:30053", "198.18.1.9:30053", "198.51.100.1:1002", replied|dnat, 10, 0)

	a := NewAnnotator(v, []netip.Addr{nodeIP})
	if r, ok := a.Annotate(&toNode); !ok || r.Via != ViaNodePort || r.Service.Name != "np" || r.Port != 53 {
		t.Errorf("to node: %v %+v", ok, r)
	}
	if _, ok := a.Annotate(&toOther); ok {
		t.Error("node port on a foreign address matched")
	}
	if r, ok := a.Annotate(&toSvc); !ok || r.Service.Name != "other" || r.Via != ViaClusterIP {
		t.Errorf("to service IP: %v %+v", ok, r)
	}
	// Addresses unknown: any destination counts, as in the proxy's cleanup.
	if r, ok := NewAnnotator(v, nil).Annotate(&toOther); !ok || r.Service.Name != "np" {
		t.Errorf("unknown local addresses: %v %+v", ok, r)
	}
}

// Each way an endpoint can stop being used gets its own words; endpoints
// still in use are never stale; TCP never is.
func TestStaleExplanations(t *testing.T) {
	v := view4(t,
		"svc a/dns UDP 198.19.192.10:53",
		"ep a/dns 198.18.1.1:53 ready node=node1",
		"ep a/dns 198.18.1.2:53 serving terminating node=node2", // ready ones exist: unused
		"ep a/dns 198.18.1.3:53 node=node3",                     // not ready
		"svc a/rolling UDP 198.19.192.11:53",
		"ep a/rolling 198.18.2.1:53 serving terminating node=node2", // no ready one: used
		"svc a/local UDP 198.19.192.12:53 itp=Local",
		"ep a/local 198.18.3.1:53 ready local",
		"ep a/local 198.18.3.2:53 ready node=node2",
		"svc a/web TCP 198.19.192.13:80",
		"ep a/web 198.18.4.1:80 ready",
	)
	pods := map[string]string{"198.18.1.2": "dns-b", "198.18.1.3": "dns-c", "198.18.3.2": "local-b"}
	for _, eps := range v.Families[0].Snapshot.Endpoints {
		for _, ep := range eps {
			ep.PodName = pods[ep.IP.String()]
		}
	}
	flows := []conntrack.Flow{
		flow(udp, "198.18.9.1:1001", "198.19.192.10:53", "198.18.1.1:53", "198.18.9.1:1001", replied|dnat, 10, 0),
		flow(udp, "198.18.9.1:1002", "198.19.192.10:53", "198.18.1.2:53", "198.18.9.1:1002", replied|dnat, 10, 0),
		flow(udp, "198.18.9.1:1003", "198.19.192.10:53", "198.18.1.3:53", "198.18.9.1:1003", replied|dnat, 10, 0),
		flow(udp, "198.18.9.1:1004", "198.19.192.11:53", "198.18.2.1:53", "198.18.9.1:1004", replied|dnat, 10, 0),
		flow(udp, "198.18.9.1:1005", "198.19.192.12:53", "198.18.3.1:53", "198.18.9.1:1005", replied|dnat, 10, 0),
		flow(udp, "198.18.9.1:1006", "198.19.192.12:53", "198.18.3.2:53", "198.18.9.1:1006", replied|dnat, 10, 0),
		flow(tcp, "198.18.9.1:1007", "198.19.192.13:80", "198.18.7.7:80", "198.18.9.1:1007", assured|dnat, 10, established),
	}
	got := map[uint16]string{}
	for _, r := range NewAnnotator(v, nil).Stale(flows) {
		got[r.Client.Port()] = r.ReasonCode + ": " + r.Reason
	}
	// Entries to endpoints that still serve (terminating with ready peers,
	// or not used from this node) are not stale: the flow may stay there.
	want := map[uint16]string{
		1003: "endpoint_gone: endpoint 198.18.1.3:53 (pod dns-c on node3) is not ready",
	}
	if len(got) != len(want) {
		t.Errorf("stale: %v", got)
	}
	for port, w := range want {
		if got[port] != w {
			t.Errorf("client port %d: %q, want %q", port, got[port], w)
		}
	}
}

func TestRowFilter(t *testing.T) {
	v := view4(t,
		"svc a/dns:dns UDP 198.19.192.10:53",
		"ep a/dns:dns 198.18.1.1:53 ready",
		"svc a/dns:dns-tcp TCP 198.19.192.10:53",
		"ep a/dns:dns-tcp 198.18.1.1:53 ready",
	)
	rows := NewAnnotator(v, nil).List([]conntrack.Flow{
		flow(udp, "198.18.9.1:1001", "198.19.192.10:53", "198.18.1.1:53", "198.18.9.1:1001", assured|dnat, 10, 0),
		flow(tcp, "198.18.9.1:1002", "198.19.192.10:53", "198.18.1.1:53", "198.18.9.1:1002", assured|dnat, 10, established),
		flow(tcp, "198.18.9.1:1003", "198.19.192.10:53", "198.18.1.1:53", "198.18.9.1:1003", conntrack.StatusConfirmed|dnat, 10, synSent),
	})
	for _, c := range []struct {
		f    RowFilter
		want []uint16
	}{
		{RowFilter{}, []uint16{1001, 1002, 1003}},
		{RowFilter{Namespace: "a", Name: "dns", Port: "dns-tcp"}, []uint16{1002, 1003}},
		{RowFilter{Namespace: "a", Name: "dns", Port: "53"}, []uint16{1001, 1002, 1003}},
		{RowFilter{Namespace: "b", Name: "dns"}, nil},
		{RowFilter{Protocol: conntrack.ProtoUDP}, []uint16{1001}},
		{RowFilter{State: "ASSURED"}, []uint16{1001, 1002}},
		{RowFilter{State: "SYN_SENT"}, []uint16{1003}},
		{RowFilter{State: "UNREPLIED", Protocol: conntrack.ProtoTCP}, []uint16{1003}},
	} {
		var got []uint16
		for _, r := range c.f.Filter(rows) {
			got = append(got, r.Client.Port())
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%+v: got %v, want %v", c.f, got, c.want)
		}
	}
}

func TestFlowState(t *testing.T) {
	for _, c := range []struct {
		fl   conntrack.Flow
		want string
	}{
		{conntrack.Flow{Protocol: udp}, "UNREPLIED"},
		{conntrack.Flow{Protocol: udp, Status: replied}, "REPLIED"},
		{conntrack.Flow{Protocol: udp, Status: assured}, "ASSURED"},
		{conntrack.Flow{Protocol: tcp, TCPState: established, Status: assured}, "ESTABLISHED,ASSURED"},
		{conntrack.Flow{Protocol: conntrack.ProtoSCTP, SCTPState: 4, Status: replied}, "ESTABLISHED,REPLIED"},
		{conntrack.Flow{Protocol: conntrack.ProtoSCTP, SCTPState: 200}, "200,UNREPLIED"},
	} {
		if got := strings.Join(FlowState(&c.fl), ","); got != c.want {
			t.Errorf("%+v: %q, want %q", c.fl, got, c.want)
		}
	}
	if _, err := parseState("cookie_wait"); err != nil {
		t.Error(err)
	}
	if _, err := parseState("NONE"); err == nil {
		t.Error("NONE accepted")
	}
}

// The proxy's JSON view converts to snapshots the plan can use; bad data is
// refused with the field named.
func TestViewFromSnapshotView(t *testing.T) {
	sv := &app.SnapshotView{Node: "n1", Services: []app.ServiceView{
		{Namespace: "a", Name: "b", Port: "p", Protocol: "UDP", Family: "IPv6", ClusterIP: "2001:db8:20::1", ServicePort: 53,
			NodePort: 30053, LBIPs: []string{"2001:db8:30::1"},
			Endpoints: []app.EndpointView{{IP: "2001:db8:10:1::2", Port: 53, Ready: true, Serving: true, Pod: "pod-z", Node: "n1", Local: true},
				{IP: "2001:db8:10:1::1", Port: 53, Terminating: true, Serving: true, Pod: "pod-y", Node: "n2"}}},
	}}
	v, err := ViewFromSnapshotView(sv, "src")
	if err != nil {
		t.Fatal(err)
	}
	fv := v.Family(model.IPv6)
	if v.Family(model.IPv4) != nil || fv == nil || fv.Node.Name != "n1" {
		t.Fatalf("families %+v", v.Families)
	}
	name := model.ServicePortName{Namespace: "a", Name: "b", Port: "p", Protocol: model.UDP}
	sp := fv.Snapshot.Services[name]
	if sp == nil || sp.NodePort != 30053 || len(sp.LoadBalancerVIPs) != 1 || sp.ClusterIP.String() != "2001:db8:20::1" {
		t.Fatalf("service %+v", sp)
	}
	eps := fv.Snapshot.Endpoints[name]
	if len(eps) != 2 || eps[0].PodName != "pod-y" || !eps[0].Terminating || eps[1].PodName != "pod-z" || !eps[1].IsLocal {
		t.Errorf("endpoints not sorted or not converted: %+v %+v", eps[0], eps[1])
	}

	dup := &app.SnapshotView{Services: []app.ServiceView{sv.Services[0], sv.Services[0]}}
	if _, err := ViewFromSnapshotView(dup, "src"); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("duplicate: %v", err)
	}
	bad := *sv
	bad.Services = []app.ServiceView{sv.Services[0]}
	bad.Services[0].Endpoints = []app.EndpointView{{IP: "198.18.1.1", Port: 53}}
	if _, err := ViewFromSnapshotView(&bad, "src"); err == nil || !strings.Contains(err.Error(), "endpoint 198.18.1.1 is not an IPv6 address") {
		t.Errorf("wrong-family endpoint: %v", err)
	}
	bad.Services[0].Family = "IPv5"
	if _, err := ViewFromSnapshotView(&bad, "src"); err == nil || !strings.Contains(err.Error(), `unknown IP family "IPv5"`) {
		t.Errorf("bad family: %v", err)
	}
}
