package render

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kpr-proxy/kpr/internal/model"
)

// benchSnapshot is N Services × eps endpoints in the scale-bench ranges
// (Service IPs 198.19.192.0/18, endpoints 198.18.0.0/16; no traffic).
func benchSnapshot(n, eps int) *model.Snapshot {
	s := &model.Snapshot{
		Family:    model.IPv4,
		Services:  make(map[model.ServicePortName]*model.ServicePort, n),
		Endpoints: make(map[model.ServicePortName][]*model.Endpoint, n),
	}
	for i := 0; i < n; i++ {
		name := model.ServicePortName{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc-%d", i), Port: "http", Protocol: model.TCP}
		s.Services[name] = &model.ServicePort{
			Name: name, Protocol: model.TCP, Port: 80,
			ClusterIP: netip.AddrFrom4([4]byte{198, 19, 192 + byte(i>>8&0x3f), byte(i)}),
		}
		list := make([]*model.Endpoint, eps)
		for e := range list {
			k := i*eps + e
			list[e] = &model.Endpoint{IP: netip.AddrFrom4([4]byte{198, 18, byte(k >> 8), byte(k)}), Port: 8080, Ready: true, Serving: true, NodeName: "node2"}
		}
		sortEndpoints(list)
		s.Endpoints[name] = list
	}
	return s
}

func benchFull(b *testing.B, n int) {
	snap := benchSnapshot(n, 10)
	cfg := baseConfig(model.IPv4)
	node := defaultNode()
	b.ReportAllocs()
	b.ResetTimer()
	var res *Result
	for i := 0; i < b.N; i++ {
		res = Render(Input{Snapshot: snap, Node: node, Config: cfg})
	}
	b.ReportMetric(float64(res.Stats.Bytes), "batch-bytes")
	b.ReportMetric(float64(res.Stats.Lines), "batch-lines")
}

// benchPartial: one Service's endpoints change between syncs.
func benchPartial(b *testing.B, n int) {
	snap := benchSnapshot(n, 10)
	cfg := baseConfig(model.IPv4)
	node := defaultNode()
	state := Render(Input{Snapshot: snap, Node: node, Config: cfg}).State
	names := snap.SortedNames()
	b.ReportAllocs()
	b.ResetTimer()
	var res *Result
	for i := 0; i < b.N; i++ {
		next := &model.Snapshot{Family: snap.Family, Services: snap.Services, Endpoints: make(map[model.ServicePortName][]*model.Endpoint, len(snap.Endpoints))}
		for k, v := range snap.Endpoints {
			next.Endpoints[k] = v
		}
		name := names[i%len(names)]
		eps := append([]*model.Endpoint{}, snap.Endpoints[name][1:]...)
		next.Endpoints[name] = eps
		b.StartTimer()
		res = Render(Input{Snapshot: next, Node: node, Config: cfg, Prev: state})
		b.StopTimer()
	}
	b.ReportMetric(float64(res.Stats.Bytes), "batch-bytes")
	b.ReportMetric(float64(res.Stats.Lines), "batch-lines")
}

func BenchmarkRenderFull1k(b *testing.B)     { benchFull(b, 1000) }
func BenchmarkRenderFull10k(b *testing.B)    { benchFull(b, 10000) }
func BenchmarkRenderPartial1k(b *testing.B)  { benchPartial(b, 1000) }
func BenchmarkRenderPartial10k(b *testing.B) { benchPartial(b, 10000) }
