package conntrack_test

import (
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	cttesting "github.com/kpr-proxy/kpr/internal/conntrack/testing"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

const (
	udp  = conntrack.ProtoUDP
	tcp  = conntrack.ProtoTCP
	sctp = conntrack.ProtoSCTP
)

func newCleaner(t *testing.T, fam model.Family, ct conntrack.Interface) *conntrack.Cleaner {
	t.Helper()
	c, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: fam, Conntrack: ct, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A shared cast of Services for the table below.
var (
	dnsEPsOld = eps("198.18.1.2:5353", "198.18.2.2:5353")
	dnsEPsNew = eps("198.18.2.2:5353", "198.18.3.2:5353") // 1.2 gone, 3.2 new
	dnsSvc    = svcPort("dns", model.UDP, "198.19.192.10", 53)
	dnsTCP    = svcPort("dns", model.TCP, "198.19.192.10", 53)
	otherSvc  = svcPort("other", model.UDP, "198.19.192.20", 53)
	otherEPs  = eps("198.18.9.9:5353")
)

func TestCleanupTable(t *testing.T) {
	dnsFE := ap("198.19.192.10:53")
	type tc struct {
		name     string
		fam      model.Family
		prev     *model.Snapshot
		cur      *model.Snapshot
		flows    []conntrack.Flow
		wantGone []int // indexes into flows that must be deleted; the rest must stay
		wantList int   // expected List calls
	}
	// Unchanged Services are the same pointers in prev and cur.
	base := []entry{{otherSvc, otherEPs}, {dnsTCP, dnsEPsOld}}
	cases := []tc{
		{
			name: "endpoint removed: its entries go, others stay",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{dnsSvc, dnsEPsOld})...),
			cur:  snap(model.IPv4, append(base, entry{dnsSvc, dnsEPsNew})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, dnsFE, ap("198.18.1.2:5353")),  // 0: to removed endpoint
				natFlow(udp, clientIP2, 40001, dnsFE, ap("198.18.1.2:5353")), // 1: idem, other client
				natFlow(udp, clientIP, 40002, dnsFE, ap("198.18.2.2:5353")),  // 2: to kept endpoint
				natFlow(tcp, clientIP, 40003, dnsFE, ap("198.18.1.2:5353")),  // 3: TCP to removed endpoint: untouched
				// 4: unrelated destination (a pod directly), replying from the removed endpoint's IP
				natFlow(udp, clientIP, 40004, ap("198.18.1.2:5353"), ap("198.18.1.2:5353")),
				// 5: unchanged Service whose entries point nowhere valid: not examined, kept
				natFlow(udp, clientIP, 40005, ap("198.19.192.20:53"), ap("198.18.1.2:5353")),
			},
			wantGone: []int{0, 1},
			wantList: 1,
		},
		{
			name: "zero to one endpoint: un-NATed (black-holed) entries go",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{dnsSvc, nil})...),
			cur:  snap(model.IPv4, append(base, entry{dnsSvc, eps("198.18.1.2:5353")})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, dnsFE, dnsFE),                 // 0: sent while no endpoint
				natFlow(udp, clientIP, 40001, dnsFE, ap("198.18.1.2:5353")), // 1: already to the new endpoint
				natFlow(tcp, clientIP, 40002, dnsFE, dnsFE),                 // 2: TCP: untouched
			},
			wantGone: []int{0},
			wantList: 1,
		},
		{
			name: "some to zero endpoints: entries to the dead endpoints go",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{dnsSvc, dnsEPsOld})...),
			cur:  snap(model.IPv4, append(base, entry{dnsSvc, nil})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, dnsFE, ap("198.18.1.2:5353")),
				natFlow(udp, clientIP, 40001, dnsFE, ap("198.18.2.2:5353")),
			},
			wantGone: []int{0, 1},
			wantList: 1,
		},
		{
			name: "endpoint port changed on the same pod IP",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{dnsSvc, eps("198.18.1.2:5353")})...),
			cur:  snap(model.IPv4, append(base, entry{dnsSvc, eps("198.18.1.2:5354")})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, dnsFE, ap("198.18.1.2:5353")),
				natFlow(udp, clientIP, 40001, dnsFE, ap("198.18.1.2:5354")),
			},
			wantGone: []int{0},
			wantList: 1,
		},
		{
			name: "NodePort: any local address, by node port",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{svcPort("np", model.UDP, "198.19.192.30", 53, withNodePort(30053)), dnsEPsOld})...),
			cur:  snap(model.IPv4, append(base, entry{svcPort("np", model.UDP, "198.19.192.30", 53, withNodePort(30053)), dnsEPsNew})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, ap("192.0.2.10:30053"), ap("198.18.1.2:5353")), // 0: node IP, removed ep
				natFlow(udp, clientIP, 40001, ap("127.0.0.1:30053"), ap("198.18.1.2:5353")),  // 1: loopback, removed ep
				natFlow(udp, clientIP, 40002, ap("192.0.2.10:30053"), ap("198.18.2.2:5353")), // 2: kept ep
				natFlow(udp, clientIP, 40003, ap("198.19.192.30:53"), ap("198.18.1.2:5353")), // 3: its cluster IP, removed ep
				natFlow(tcp, clientIP, 40004, ap("192.0.2.10:30053"), ap("198.18.1.2:5353")), // 4: TCP
				natFlow(udp, clientIP, 40005, ap("192.0.2.10:30054"), ap("198.18.1.2:5353")), // 5: other port
			},
			wantGone: []int{0, 1, 3},
			wantList: 1,
		},
		{
			name: "NodePort number equal to another unchanged Service's port: that Service's entries are kept",
			fam:  model.IPv4,
			prev: snap(model.IPv4,
				entry{svcPort("np", model.UDP, "198.19.192.30", 53, withNodePort(30053)), dnsEPsOld},
				entry{svcPort("hi", model.UDP, "198.19.192.40", 30053), otherEPs}),
			cur: func() *model.Snapshot {
				return nil // filled below
			}(),
		},
		{
			name: "external IP and LoadBalancer IP",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{svcPort("lb", model.UDP, "198.19.192.50", 53, withExternalIPs("203.0.113.5"), withLB("203.0.113.6")), dnsEPsOld})...),
			cur:  snap(model.IPv4, append(base, entry{svcPort("lb", model.UDP, "198.19.192.50", 53, withExternalIPs("203.0.113.5"), withLB("203.0.113.6")), dnsEPsNew})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, ap("203.0.113.5:53"), ap("198.18.1.2:5353")), // 0 external IP, removed ep
				natFlow(udp, clientIP, 40001, ap("203.0.113.6:53"), ap("198.18.1.2:5353")), // 1 LB IP, removed ep
				natFlow(udp, clientIP, 40002, ap("203.0.113.6:53"), ap("198.18.3.2:5353")), // 2 LB IP, new ep
				natFlow(udp, clientIP, 40003, ap("203.0.113.6:54"), ap("198.18.1.2:5353")), // 3 LB IP, other port
			},
			wantGone: []int{0, 1},
			wantList: 1,
		},
		{
			name: "frontends removed: external IP dropped from the Service, whole Service deleted",
			fam:  model.IPv4,
			prev: snap(model.IPv4,
				entry{svcPort("lb", model.UDP, "198.19.192.50", 53, withExternalIPs("203.0.113.5")), dnsEPsOld},
				entry{svcPort("gone", model.UDP, "198.19.192.60", 53, withNodePort(30060)), dnsEPsOld}),
			cur: snap(model.IPv4,
				entry{svcPort("lb", model.UDP, "198.19.192.50", 53), dnsEPsOld}),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, ap("203.0.113.5:53"), ap("198.18.1.2:5353")),   // 0 removed external IP
				natFlow(udp, clientIP, 40001, ap("198.19.192.50:53"), ap("198.18.1.2:5353")), // 1 still valid
				natFlow(udp, clientIP, 40002, ap("198.19.192.60:53"), ap("198.18.1.2:5353")), // 2 deleted Service
				natFlow(udp, clientIP, 40003, ap("192.0.2.10:30060"), ap("198.18.2.2:5353")), // 3 its node port
				natFlow(tcp, clientIP, 40004, ap("198.19.192.60:53"), ap("198.18.1.2:5353")), // 4 TCP
			},
			wantGone: []int{0, 2, 3},
			wantList: 1,
		},
		{
			name: "unchanged Services are not examined (no dump at all)",
			fam:  model.IPv4,
			prev: snap(model.IPv4, append(base, entry{dnsSvc, dnsEPsOld})...),
			cur:  snap(model.IPv4, append(base, entry{dnsSvc, dnsEPsOld})...),
			flows: []conntrack.Flow{
				natFlow(udp, clientIP, 40000, dnsFE, ap("198.18.7.7:5353")), // stale, but nobody changed
			},
			wantList: 0,
		},
		{
			name: "only a TCP Service changed: no dump",
			fam:  model.IPv4,
			prev: snap(model.IPv4, entry{otherSvc, otherEPs}, entry{dnsTCP, dnsEPsOld}),
			cur:  snap(model.IPv4, entry{otherSvc, otherEPs}, entry{dnsTCP, dnsEPsNew}),
			flows: []conntrack.Flow{
				natFlow(tcp, clientIP, 40000, dnsFE, ap("198.18.1.2:5353")),
			},
			wantList: 0,
		},
		{
			name: "SCTP",
			fam:  model.IPv4,
			prev: snap(model.IPv4, entry{svcPort("sc", model.SCTP, "198.19.192.70", 3868), dnsEPsOld}),
			cur:  snap(model.IPv4, entry{svcPort("sc", model.SCTP, "198.19.192.70", 3868), dnsEPsNew}),
			flows: []conntrack.Flow{
				natFlow(sctp, clientIP, 40000, ap("198.19.192.70:3868"), ap("198.18.1.2:5353")),
				natFlow(sctp, clientIP, 40001, ap("198.19.192.70:3868"), ap("198.18.2.2:5353")),
				natFlow(udp, clientIP, 40002, ap("198.19.192.70:3868"), ap("198.18.1.2:5353")), // UDP to an SCTP Service's port
			},
			wantGone: []int{0},
			wantList: 1,
		},
		{
			name: "IPv6",
			fam:  model.IPv6,
			prev: snap(model.IPv6, entry{svcPort("dns6", model.UDP, "2001:db8:20::a", 53, withNodePort(30053), withLB("2001:db8:30::5")), eps("[2001:db8:10::2]:5353", "[2001:db8:10:1::2]:5353")}),
			cur:  snap(model.IPv6, entry{svcPort("dns6", model.UDP, "2001:db8:20::a", 53, withNodePort(30053), withLB("2001:db8:30::5")), eps("[2001:db8:10:1::2]:5353")}),
			flows: []conntrack.Flow{
				natFlow(udp, ip("2001:db8:1::77"), 40000, ap("[2001:db8:20::a]:53"), ap("[2001:db8:10::2]:5353")),
				natFlow(udp, ip("2001:db8:1::77"), 40001, ap("[2001:db8:20::a]:53"), ap("[2001:db8:10:1::2]:5353")),
				natFlow(udp, ip("2001:db8:1::77"), 40002, ap("[2001:db8:30::5]:53"), ap("[2001:db8:10::2]:5353")),
				natFlow(udp, ip("2001:db8:1::77"), 40003, ap("[2001:db8:1::10]:30053"), ap("[2001:db8:10::2]:5353")),
				natFlow(udp, ip("2001:db8:1::77"), 40004, ap("[2001:db8:20::a]:53"), ap("[2001:db8:20::a]:53")),
				// An IPv4 flow in the table is never touched by the IPv6 cleaner.
				natFlow(udp, clientIP, 40005, ap("198.19.192.10:53"), ap("198.18.1.2:5353")),
			},
			wantGone: []int{0, 2, 3, 4},
			wantList: 1,
		},
	}

	// The "coincidence" case: Service "hi" has port 30053 on its cluster
	// IP, equal to np's node port; hi is unchanged, np changes.
	hi := cases[5].prev.Services[spn("hi", model.UDP)]
	npNew := svcPort("np", model.UDP, "198.19.192.30", 53, withNodePort(30053))
	cases[5].cur = snap(model.IPv4, entry{npNew, dnsEPsNew}, entry{hi, cases[5].prev.Endpoints[hi.Name]})
	cases[5].flows = []conntrack.Flow{
		natFlow(udp, clientIP, 40000, ap("198.19.192.40:30053"), ap("198.18.9.9:5353")), // 0 hi's own traffic
		natFlow(udp, clientIP, 40001, ap("192.0.2.10:30053"), ap("198.18.9.9:5353")),    // 1 node port to a non-endpoint
	}
	cases[5].wantGone = []int{1}
	cases[5].wantList = 1

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake := cttesting.NewFake()
			cl := newCleaner(t, c.fam, fake)
			// A first (full) pass over prev on an empty table, so that the
			// pass under test is a partial one, as in steady state.
			if _, err := cl.Cleanup(nil, c.prev, node); err != nil {
				t.Fatal(err)
			}
			fake.Add(c.flows...)
			fake.ListCalls = nil

			res, err := cl.Cleanup(c.prev, c.cur, node)
			if err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			if res.Full {
				t.Errorf("pass was full, want partial")
			}
			if len(fake.ListCalls) != c.wantList {
				t.Errorf("List calls = %d, want %d", len(fake.ListCalls), c.wantList)
			}
			gone := map[int]bool{}
			for _, i := range c.wantGone {
				gone[i] = true
			}
			for i, fl := range c.flows {
				if has := fake.Has(fl); has == gone[i] {
					t.Errorf("flow %d (%s): present=%v, want present=%v", i, fl.String(), has, !gone[i])
				}
			}
			if res.Deleted != len(c.wantGone) || res.Stale != len(c.wantGone) {
				t.Errorf("result %+v, want %d deleted", res, len(c.wantGone))
			}
		})
	}
}

func TestCleanupFirstPassIsFullAndPrevNilExaminesAll(t *testing.T) {
	fake := cttesting.NewFake()
	cur := snap(model.IPv4, entry{dnsSvc, dnsEPsNew}, entry{otherSvc, otherEPs})
	stale := natFlow(udp, clientIP, 40000, ap("198.19.192.20:53"), ap("198.18.1.2:5353"))
	ok := natFlow(udp, clientIP, 40001, ap("198.19.192.20:53"), ap("198.18.9.9:5353"))
	fake.Add(stale, ok)
	cl := newCleaner(t, model.IPv4, fake)
	// prev == cur: nothing changed, but the first pass must be full.
	res, err := cl.Cleanup(cur, cur, node)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.Examined != 2 || res.Deleted != 1 {
		t.Fatalf("first pass: %+v, want full, 2 examined, 1 deleted", res)
	}
	if fake.Has(stale) || !fake.Has(ok) {
		t.Fatalf("wrong flows deleted: %v", fake.Flows())
	}
	// Second pass with the same snapshot: nothing examined, no dump.
	fake.ListCalls = nil
	res, err = cl.Cleanup(cur, cur, node)
	if err != nil || res.Full || res.Examined != 0 || len(fake.ListCalls) != 0 {
		t.Fatalf("steady pass: %+v err=%v lists=%d", res, err, len(fake.ListCalls))
	}
}

func TestCleanupOneDumpPerPass(t *testing.T) {
	fake := cttesting.NewFake()
	cl := newCleaner(t, model.IPv4, fake)
	var entries []entry
	for i, name := range []string{"a", "b", "c"} {
		_ = i
		entries = append(entries, entry{svcPort(name, model.UDP, "198.19.192."+string(rune('1'+i)), 53), dnsEPsOld})
	}
	entries = append(entries, entry{svcPort("s", model.SCTP, "198.19.192.9", 53), dnsEPsOld})
	if _, err := cl.Cleanup(nil, snap(model.IPv4, entries...), node); err != nil {
		t.Fatal(err)
	}
	if len(fake.ListCalls) != 1 {
		t.Fatalf("List calls = %d, want 1", len(fake.ListCalls))
	}
	// UDP and SCTP both needed: one unfiltered family dump.
	if got := fake.ListCalls[0]; got.Family != model.IPv4 || got.Filter.Protocol != 0 {
		t.Errorf("List(%v, %+v), want IPv4 with no protocol filter", got.Family, got.Filter)
	}

	// Only UDP needed: the dump is narrowed to UDP.
	fake2 := cttesting.NewFake()
	cl2 := newCleaner(t, model.IPv4, fake2)
	if _, err := cl2.Cleanup(nil, snap(model.IPv4, entries[:3]...), node); err != nil {
		t.Fatal(err)
	}
	if len(fake2.ListCalls) != 1 || fake2.ListCalls[0].Filter.Protocol != udp {
		t.Errorf("List calls %+v, want one UDP-filtered dump", fake2.ListCalls)
	}
}

func TestCleanupErrorForcesFullNextPass(t *testing.T) {
	fake := cttesting.NewFake()
	cl := newCleaner(t, model.IPv4, fake)
	s1 := snap(model.IPv4, entry{dnsSvc, dnsEPsOld}, entry{otherSvc, otherEPs})
	if _, err := cl.Cleanup(nil, s1, node); err != nil {
		t.Fatal(err)
	}
	s2 := snap(model.IPv4, entry{dnsSvc, dnsEPsNew}, entry{otherSvc, otherEPs})
	fake.ListErr = errors.New("netlink: boom")
	if _, err := cl.Cleanup(s1, s2, node); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("want the List error, got %v", err)
	}
	fake.ListErr = nil
	// An entry of the unchanged "other" Service that went stale while the
	// cleaner was failing: only a full pass sees it.
	stale := natFlow(udp, clientIP, 40000, ap("198.19.192.20:53"), ap("198.18.5.5:5353"))
	fake.Add(stale)
	res, err := cl.Cleanup(s2, s2, node)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || fake.Has(stale) {
		t.Fatalf("after an error the next pass must be full: %+v, stale present=%v", res, fake.Has(stale))
	}
}

func TestCleanupDeleteErrorReported(t *testing.T) {
	fake := cttesting.NewFake()
	fake.Add(natFlow(udp, clientIP, 40000, ap("198.19.192.10:53"), ap("198.18.1.2:5353")))
	fake.DeleteErr = errors.New("EPERM")
	cl := newCleaner(t, model.IPv4, fake)
	res, err := cl.Cleanup(nil, snap(model.IPv4, entry{dnsSvc, dnsEPsNew}), node)
	if err == nil || res.Stale != 1 {
		t.Fatalf("want an error and 1 stale, got %+v %v", res, err)
	}
}

func TestCleanupNodeZoneChangeForcesFull(t *testing.T) {
	fake := cttesting.NewFake()
	cl := newCleaner(t, model.IPv4, fake)
	s := snap(model.IPv4, entry{dnsSvc, dnsEPsOld})
	if _, err := cl.Cleanup(nil, s, node); err != nil {
		t.Fatal(err)
	}
	moved := *node
	moved.Zone = "zone-b"
	res, err := cl.Cleanup(s, s, &moved)
	if err != nil || !res.Full {
		t.Fatalf("zone change: %+v %v, want a full pass", res, err)
	}
}

// An established flow stays on an endpoint as long as it serves, wherever
// new traffic goes (traffic policy Local, terminating with ready peers), as
// kube-proxy's reconciler does; only endpoints that are gone or not serving
// lose their entries.
func TestCleanupKeepsServingEndpoints(t *testing.T) {
	local := &model.Endpoint{IP: ip("198.18.1.2"), Port: 5353, Ready: true, Serving: true, IsLocal: true, NodeName: "node-a"}
	remote := &model.Endpoint{IP: ip("198.18.2.2"), Port: 5353, Ready: true, Serving: true, NodeName: "node-b"}
	term := &model.Endpoint{IP: ip("198.18.3.2"), Port: 5353, Serving: true, Terminating: true, IsLocal: true, NodeName: "node-a"}
	dead := &model.Endpoint{IP: ip("198.18.3.3"), Port: 5353, Terminating: true, NodeName: "node-b"}
	svc := svcPort("itp", model.UDP, "198.19.192.80", 53, func(s *model.ServicePort) { s.InternalPolicyLocal = true })
	cur := snap(model.IPv4, entry{svc, []*model.Endpoint{local, remote, term, dead}})

	fe := ap("198.19.192.80:53")
	toLocal := natFlow(udp, clientIP, 1, fe, local.AddrPort())
	toRemote := natFlow(udp, clientIP, 2, fe, remote.AddrPort())
	toTerm := natFlow(udp, clientIP, 3, fe, term.AddrPort())
	toDead := natFlow(udp, clientIP, 4, fe, dead.AddrPort())
	fake := cttesting.NewFake()
	fake.Add(toLocal, toRemote, toTerm, toDead)
	if _, err := newCleaner(t, model.IPv4, fake).Cleanup(nil, cur, node); err != nil {
		t.Fatal(err)
	}
	if !fake.Has(toLocal) || !fake.Has(toRemote) || !fake.Has(toTerm) || fake.Has(toDead) {
		t.Fatalf("want the serving endpoints' entries kept and the non-serving one deleted, table: %v", fake.Flows())
	}
}

func TestCleanupValidation(t *testing.T) {
	fake := cttesting.NewFake()
	if _, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: 0, Conntrack: fake, Logger: zap.NewNop()}); err == nil {
		t.Error("family 0 accepted")
	}
	if _, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: model.IPv4, Logger: zap.NewNop()}); err == nil {
		t.Error("nil Conntrack accepted")
	}
	if _, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: model.IPv4, Conntrack: fake}); err == nil {
		t.Error("nil Logger accepted")
	}
	cl := newCleaner(t, model.IPv4, fake)
	if _, err := cl.Cleanup(nil, nil, node); err == nil {
		t.Error("nil snapshot accepted")
	}
	if _, err := cl.Cleanup(nil, snap(model.IPv6), node); err == nil {
		t.Error("IPv6 snapshot accepted by an IPv4 cleaner")
	}
	if _, err := cl.Cleanup(snap(model.IPv6), snap(model.IPv4), node); err == nil {
		t.Error("IPv6 prev accepted by an IPv4 cleaner")
	}
}

func TestCleanupMetricsAndLogs(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg)
	core, logs := observer.New(zapcore.DebugLevel)
	fake := cttesting.NewFake()
	fake.Add(
		natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353")),
		natFlow(udp, clientIP, 2, ap("198.19.192.10:53"), ap("198.19.192.10:53")),
	)
	now := time.Unix(1000, 0)
	cl, err := conntrack.NewCleaner(conntrack.CleanerConfig{
		Family: model.IPv4, Conntrack: fake, Logger: zap.New(core), Metrics: m,
		Now: func() time.Time { now = now.Add(time.Millisecond); return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Cleanup(nil, snap(model.IPv4, entry{dnsSvc, dnsEPsNew}), node); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var deleted float64 = -1
	var observed uint64
	for _, mf := range mfs {
		switch mf.GetName() {
		case "kubeproxy_conntrack_reconciler_deleted_entries_total":
			deleted = mf.GetMetric()[0].GetCounter().GetValue()
			if l := mf.GetMetric()[0].GetLabel()[0]; l.GetName() != "ip_family" || l.GetValue() != "IPv4" {
				t.Errorf("label %v", l)
			}
		case "kubeproxy_conntrack_reconciler_sync_duration_seconds":
			observed = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if deleted != 2 || observed != 1 {
		t.Errorf("metrics: deleted=%v observations=%d, want 2 and 1", deleted, observed)
	}

	var reasons []string
	for _, e := range logs.FilterMessage("deleting stale conntrack entries").All() {
		f := e.ContextMap()
		if f["service"] != "ns/dns:p" || f["ip_family"] != "IPv4" || f["protocol"] != "UDP" {
			t.Errorf("per-service log fields: %v", f)
		}
		reasons = append(reasons, f["reason"].(string))
	}
	sort.Strings(reasons)
	if strings.Join(reasons, ",") != conntrack.ReasonEndpointGone+","+conntrack.ReasonNotNATed {
		t.Errorf("reasons logged: %v", reasons)
	}
	sum := logs.FilterMessage("conntrack cleanup finished").All()
	if len(sum) != 1 || sum[0].Level != zapcore.InfoLevel || sum[0].ContextMap()["deleted"] != int64(2) {
		t.Errorf("summary log: %+v", sum)
	}
	if n := len(logs.FilterMessage("deleting stale conntrack entry").All()); n != 2 {
		t.Errorf("per-flow debug logs = %d, want 2", n)
	}
}

func TestNilMetricsIsFine(t *testing.T) {
	fake := cttesting.NewFake()
	cl := newCleaner(t, model.IPv4, fake) // Metrics nil
	if _, err := cl.Cleanup(nil, snap(model.IPv4, entry{dnsSvc, dnsEPsNew}), node); err != nil {
		t.Fatal(err)
	}
}
