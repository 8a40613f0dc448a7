package desired

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

func TestSetNamesFitIPSetLimit(t *testing.T) {
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, n := range SetNames(f) {
			if len(n) > ipset.MaxNameLen {
				t.Errorf("set name %s is %d characters, ipset allows %d", n, len(n), ipset.MaxNameLen)
			}
		}
	}
	for _, c := range append(append([]string{}, NATChains...), FilterChains...) {
		if len(c) > 28 {
			t.Errorf("chain %s is longer than iptables' 28 characters", c)
		}
	}
}

// bigSnapshot builds n Service ports with eps endpoints each; every third
// has a NodePort, every tenth an LB IP, every twentieth is ETP Local.
func bigSnapshot(n, eps int) *model.Snapshot {
	s := &model.Snapshot{Family: model.IPv4, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for i := 0; i < n; i++ {
		name := model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("svc-%05d", i), Protocol: model.TCP}
		ip := netip.AddrFrom4([4]byte{198, 19, byte(192 + (i>>8)&63), byte(i & 255)})
		sp := &model.ServicePort{Name: name, ClusterIP: ip, Port: 80, Protocol: model.TCP}
		if i%3 == 0 {
			sp.NodePort = uint16(30000 + i%2700)
		}
		if i%10 == 0 {
			sp.LoadBalancerVIPs = []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)})}
		}
		if i%20 == 0 && sp.ExternallyAccessible() {
			sp.ExternalPolicyLocal = true
		}
		s.Services[name] = sp
		var list []*model.Endpoint
		for j := 0; j < eps; j++ {
			list = append(list, &model.Endpoint{
				IP:   netip.AddrFrom4([4]byte{198, 18, byte(j), byte(i % 250)}),
				Port: 8080, Ready: true, Serving: true, IsLocal: j == 0, NodeName: fmt.Sprintf("node%d", j),
			})
		}
		s.Endpoints[name] = list
	}
	return s
}

func TestRenderInvariants(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 50; iter++ {
		snap := bigSnapshot(1+rng.Intn(60), rng.Intn(4))
		cfg := baseConfig(model.IPv4)
		st := Render(snap, defaultNode(), cfg)
		ips := st.Sets[SetName(model.IPv4, SetIPVSIPs)]
		if len(ips.Entries) != len(st.Bind) {
			t.Fatalf("IPVS-IPS has %d entries, %d addresses are bound", len(ips.Entries), len(st.Bind))
		}
		for _, a := range st.Bind {
			if !ips.Has(ipset.IP(a)) {
				t.Fatalf("bound address %s missing from IPVS-IPS", a)
			}
		}
		for k, vs := range st.Services {
			sp := snap.Services[vs.Owner]
			if sp == nil {
				t.Fatalf("%s owned by unknown %s", k, vs.Owner)
			}
			if vs.Kind == KindClusterIP && !st.Sets[SetName(model.IPv4, SetClusterIP)].Has(ipset.IPPort(k.Addr, k.Protocol, k.Port)) {
				t.Fatalf("cluster IP %s missing from CLUSTER-IP", k)
			}
			valid := map[netip.AddrPort]bool{}
			for _, ep := range snap.Endpoints[vs.Owner] {
				valid[ep.AddrPort()] = true
			}
			for _, d := range vs.Dests {
				if !valid[d] {
					t.Fatalf("%s has real server %s that is no endpoint of %s", k, d, vs.Owner)
				}
			}
			if vs.Kind != KindNodePort && !vs.Bind && !containsAddr(cfg.NodeAddrs, k.Addr) {
				t.Fatalf("%s is neither bound nor a node address", k)
			}
		}
		// The batch must parse as two tables.
		if strings.Count(string(st.Rules), "COMMIT\n") != 2 {
			t.Fatalf("rules batch has no two COMMITs:\n%s", st.Rules)
		}
	}
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func TestSourceRangeEveryoneIsSplit(t *testing.T) {
	snap := modeltest.MustBuild(model.IPv4, nodeName,
		"svc default/lb TCP 198.19.192.50:80 lb=203.0.113.20 lbRanges=0.0.0.0/0",
		"ep default/lb 198.18.2.2:8080 ready")
	st := Render(snap, defaultNode(), baseConfig(model.IPv4))
	set := st.Sets[SetName(model.IPv4, SetLoadBalancerSourceNet)]
	for _, want := range []string{"203.0.113.20,tcp:80,0.0.0.0/1", "203.0.113.20,tcp:80,128.0.0.0/1"} {
		if !set.Has(want) {
			t.Errorf("missing %s in %v", want, set.Sorted())
		}
	}
	// Every entry must be acceptable to ipset.
	for _, e := range set.Sorted() {
		if _, err := ipset.ParseEntry(set.Type, model.IPv4, e); err != nil {
			t.Error(err)
		}
	}
}

// TestRealServersFollowPolicies checks the selection rules against the
// shared categorisation, per kind of virtual server.
func TestRealServersFollowPolicies(t *testing.T) {
	snap := modeltest.MustBuild(model.IPv4, nodeName,
		"svc default/x TCP 198.19.192.10:80 nodePort=30080 itp=Local etp=Local",
		"ep default/x 198.18.1.2:8080 ready local",
		"ep default/x 198.18.2.2:8080 ready node=node2")
	st := Render(snap, defaultNode(), baseConfig(model.IPv4))
	for k, vs := range st.Services {
		if len(vs.Dests) != 1 || vs.Dests[0].Addr() != netip.MustParseAddr("198.18.1.2") {
			t.Errorf("%s (%s): real servers %v, want only the local endpoint", k, vs.Kind, vs.Dests)
		}
	}
}

func BenchmarkRender10kServices(b *testing.B) {
	snap := bigSnapshot(10000, 10)
	cfg := baseConfig(model.IPv4)
	node := defaultNode()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := Render(snap, node, cfg)
		if len(st.Services) < 10000 {
			b.Fatal("too few virtual servers")
		}
	}
}
