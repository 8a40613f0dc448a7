package conntrack_test

import (
	"fmt"
	"net/netip"
	"testing"

	ctlib "github.com/ti-mo/conntrack"
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	cttesting "github.com/kpr-proxy/kpr/internal/conntrack/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// benchWorld is nSvc UDP Services (198.19.192.0/18) with two endpoints
// each, and nFlows flows spread over them from distinct client ports;
// every staleEvery-th flow points at an endpoint that is not (or no
// longer) one of the Service's.
func benchWorld(nSvc, nFlows, staleEvery int) (*model.Snapshot, []conntrack.Flow) {
	s := &model.Snapshot{Family: model.IPv4, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	vips := make([]netip.Addr, nSvc)
	for i := 0; i < nSvc; i++ {
		vip := netip.AddrFrom4([4]byte{198, 19, 192 + byte(i/256), byte(i % 256)})
		vips[i] = vip
		name := model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("s%d", i), Protocol: model.UDP}
		s.Services[name] = &model.ServicePort{Name: name, ClusterIP: vip, Port: 53, Protocol: model.UDP}
		s.Endpoints[name] = []*model.Endpoint{
			{IP: netip.AddrFrom4([4]byte{198, 18, byte(i / 256), byte(i%256) &^ 1}), Port: 5353, Ready: true, Serving: true},
			{IP: netip.AddrFrom4([4]byte{198, 18, byte(i / 256), byte(i%256) | 1}), Port: 5353, Ready: true, Serving: true},
		}
	}
	flows := make([]conntrack.Flow, nFlows)
	for j := range flows {
		i := j % nSvc
		ep := s.Endpoints[model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("s%d", i), Protocol: model.UDP}][j%2].AddrPort()
		if staleEvery > 0 && j%staleEvery == 0 {
			ep = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 255, 254}), 5353)
		}
		client := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + j/50000)})
		flows[j] = natFlow(udp, client, uint16(10000+j%50000), netip.AddrPortFrom(vips[i], 53), ep)
	}
	return s, flows
}

// Pure selection: plan (all Services examined) + filter 10k flows.
func BenchmarkPlanStale10kFlows1kServices(b *testing.B) {
	cur, flows := benchWorld(1000, 10000, 10)
	var n int
	for b.Loop() {
		n = len(conntrack.NewPlan(nil, cur, node).Stale(flows))
	}
	if n != 1000 {
		b.Fatalf("stale = %d, want 1000", n)
	}
}

// Partial pass: one of 1k Services changed, 10k flows dumped.
func BenchmarkPlanStalePartial(b *testing.B) {
	prev, flows := benchWorld(1000, 10000, 0)
	cur := &model.Snapshot{Family: model.IPv4, Services: prev.Services, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for k, v := range prev.Endpoints {
		cur.Endpoints[k] = v
	}
	changed := model.ServicePortName{Namespace: "ns", Name: "s7", Protocol: model.UDP}
	cur.Endpoints[changed] = cur.Endpoints[changed][:1]
	var n int
	for b.Loop() {
		n = len(conntrack.NewPlan(prev, cur, node).Stale(flows))
	}
	if n != 10 { // s7's 10 flows (j%1000 == 7, all odd) all use the removed endpoint
		b.Fatalf("stale = %d, want 10", n)
	}
}

// createFlows inserts flows into a namespace's table through ctnetlink (the
// way conntrackd replicates NATed entries), so that a benchmark can have
// tens of thousands of entries without generating traffic.
func createFlows(tb testing.TB, n *netns.NS, flows []conntrack.Flow) {
	tb.Helper()
	if err := n.Do(func() error {
		c, err := ctlib.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range flows {
			fl := &flows[i]
			f := ctlib.NewFlow(fl.Protocol, 0, fl.Orig.Src, fl.Orig.Dst, fl.Orig.SrcPort, fl.Orig.DstPort, 300, 0)
			f.TupleReply.IP.SourceAddress = fl.Reply.Src
			f.TupleReply.Proto.SourcePort = fl.Reply.SrcPort
			if fl.Protocol == tcp {
				f.ProtoInfo.TCP = &ctlib.ProtoInfoTCP{State: 3}
			}
			if err := c.Create(f); err != nil {
				return fmt.Errorf("create %s: %w", fl.String(), err)
			}
		}
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
}

func kernelBenchNS(b *testing.B) (*netns.NS, *conntrack.Netlink) {
	netns.RequireRoot(b)
	n := netns.New(b, "ct-bench")
	var ct *conntrack.Netlink
	if err := n.Do(func() error {
		var err error
		ct, err = conntrack.NewNetlink(conntrack.NetlinkConfig{})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ct.Close() })
	return n, ct
}

// Dump+filter on the real kernel: 10k UDP entries among 10k TCP ones.
// "udp" asks the kernel for UDP only (CTA_FILTER); "all" dumps the family
// and filters in Go, for comparison.
func BenchmarkKernelList10kUDP10kTCP(b *testing.B) {
	n, ct := kernelBenchNS(b)
	_, udpFlows := benchWorld(1000, 10000, 0)
	tcpFlows := make([]conntrack.Flow, len(udpFlows))
	for i, fl := range udpFlows {
		fl.Protocol = tcp
		tcpFlows[i] = fl
	}
	createFlows(b, n, udpFlows)
	createFlows(b, n, tcpFlows)
	for _, mode := range []struct {
		name  string
		proto uint8
	}{{"udp", udp}, {"all", 0}} {
		b.Run(mode.name, func(b *testing.B) {
			var got int
			for b.Loop() {
				fl, err := ct.List(model.IPv4, conntrack.Filter{Protocol: mode.proto})
				if err != nil {
					b.Fatal(err)
				}
				got = len(fl)
			}
			want := 20000
			if mode.proto != 0 {
				want = 10000
			}
			if got != want {
				b.Fatalf("listed %d, want %d", got, want)
			}
		})
	}
}

// A full cleanup pass on the real kernel: 1k Services, 10k UDP entries of
// which 1k are stale (re-created before each iteration, untimed).
func BenchmarkKernelCleanup10kFlows1kStale(b *testing.B) {
	n, ct := kernelBenchNS(b)
	cur, flows := benchWorld(1000, 10000, 10)
	var stale []conntrack.Flow
	for j := 0; j < len(flows); j += 10 {
		stale = append(stale, flows[j])
	}
	createFlows(b, n, flows)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 {
			b.StopTimer()
			createFlows(b, n, stale)
			b.StartTimer()
		}
		cl, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: model.IPv4, Conntrack: ct, Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		res, err := cl.Cleanup(nil, cur, node)
		if err != nil {
			b.Fatal(err)
		}
		if res.Deleted != 1000 || res.Dumped != 10000 {
			b.Fatalf("%+v", res)
		}
	}
}

// The same pass against the fake, to separate our cost from the kernel's.
func BenchmarkFakeCleanup10kFlows1kStale(b *testing.B) {
	cur, flows := benchWorld(1000, 10000, 10)
	fake := cttesting.NewFake()
	fake.Add(flows...)
	var stale []conntrack.Flow
	for j := 0; j < len(flows); j += 10 {
		stale = append(stale, flows[j])
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 {
			b.StopTimer()
			fake.Add(stale...)
			b.StartTimer()
		}
		cl, _ := conntrack.NewCleaner(conntrack.CleanerConfig{Family: model.IPv4, Conntrack: fake, Logger: zap.NewNop()})
		if res, err := cl.Cleanup(nil, cur, node); err != nil || res.Deleted != 1000 {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
