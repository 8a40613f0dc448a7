package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	clocktesting "k8s.io/utils/clock/testing"

	ipttest "github.com/kpr-proxy/kpr/internal/iptables/ipt/testing"
	ipvstest "github.com/kpr-proxy/kpr/internal/ipvs/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

// benchSnapshot has n Service ports with 10 endpoints each; every third has
// a NodePort.
func benchSnapshot(n int) *model.Snapshot {
	s := &model.Snapshot{Family: model.IPv4, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for i := 0; i < n; i++ {
		name := model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("svc-%05d", i), Protocol: model.TCP}
		sp := &model.ServicePort{Name: name, ClusterIP: netip.AddrFrom4([4]byte{198, 19, byte(192 + (i>>8)&63), byte(i & 255)}), Port: 80, Protocol: model.TCP}
		if i%3 == 0 {
			sp.NodePort = uint16(30000 + i%2700)
		}
		s.Services[name] = sp
		for j := 0; j < 10; j++ {
			s.Endpoints[name] = append(s.Endpoints[name], &model.Endpoint{
				IP: netip.AddrFrom4([4]byte{198, 18, byte(j), byte(i % 250)}), Port: 8080, Ready: true, Serving: true,
			})
		}
	}
	return s
}

func benchProxier(b *testing.B) (*Proxier, *clocktesting.FakeClock) {
	links := ipvstest.NewFakeLinks()
	links.SetLink("eth0", netip.MustParseAddr("192.0.2.11"))
	clk := clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0))
	p, err := New(Config{
		Family: model.IPv4, IPVS: ipvstest.NewFakeIPVS(), IPSet: ipvstest.NewFakeIPSet(), IPT: ipttest.New(model.IPv4),
		Links: links, Logger: zap.NewNop(), Clock: clk, MasqueradeBit: 14, SyncPeriod: time.Hour,
	})
	if err != nil {
		b.Fatal(err)
	}
	return p, clk
}

// BenchmarkSync10kServicesNoChange is the steady state: a partial sync of
// 10k Services (13.3k virtual servers, 133k real servers) that finds
// nothing to do. It measures kpr's own cost; the fakes cost next to
// nothing.
func BenchmarkSync10kServicesNoChange(b *testing.B) {
	p, clk := benchProxier(b)
	snap := benchSnapshot(10000)
	node := &model.Node{Name: "node1"}
	if _, err := p.Sync(context.Background(), snap, node); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		clk.Step(time.Millisecond)
		res, err := p.Sync(context.Background(), snap, node)
		if err != nil || res.Changes.Total() != 0 {
			b.Fatalf("%v %+v", err, res.Changes)
		}
	}
}

// BenchmarkSync10kServicesFirst is a cold first sync into empty fakes.
func BenchmarkSync10kServicesFirst(b *testing.B) {
	snap := benchSnapshot(10000)
	node := &model.Node{Name: "node1"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		p, _ := benchProxier(b)
		b.StartTimer()
		if _, err := p.Sync(context.Background(), snap, node); err != nil {
			b.Fatal(err)
		}
	}
}
