package conntrack_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	cttesting "github.com/kpr-proxy/kpr/internal/conntrack/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

func TestFilterMatch(t *testing.T) {
	fl := natFlow(udp, clientIP, 40000, ap("198.19.192.10:53"), ap("198.18.1.2:5353"))
	fl.Mark = 0x4000
	cases := []struct {
		f    conntrack.Filter
		want bool
	}{
		{conntrack.Filter{}, true},
		{conntrack.Filter{Protocol: udp}, true},
		{conntrack.Filter{Protocol: tcp}, false},
		{conntrack.Filter{OrigDst: ip("198.19.192.10"), OrigDstPort: 53}, true},
		{conntrack.Filter{OrigDst: ip("198.19.192.10"), OrigDstPort: 54}, false},
		{conntrack.Filter{OrigSrc: clientIP, OrigSrcPort: 40000}, true},
		{conntrack.Filter{OrigSrc: clientIP2}, false},
		{conntrack.Filter{ReplySrc: ip("198.18.1.2"), ReplySrcPort: 5353}, true},
		{conntrack.Filter{ReplySrc: ip("198.18.1.3")}, false},
		{conntrack.Filter{ReplyDst: clientIP, ReplyDstPort: 40000}, true},
		{conntrack.Filter{ReplyDstPort: 1}, false},
		{conntrack.Filter{Mark: 0x4000, MarkMask: 0x4000}, true},
		{conntrack.Filter{Mark: 0, MarkMask: 0x4000}, false},
	}
	for i, c := range cases {
		if got := c.f.Match(&fl); got != c.want {
			t.Errorf("case %d %+v: Match = %v, want %v", i, c.f, got, c.want)
		}
	}
}

func TestFilterValidate(t *testing.T) {
	if err := (&conntrack.Filter{OrigDst: ip("2001:db8:20::a")}).Validate(model.IPv4); err == nil {
		t.Error("IPv6 address in an IPv4 filter accepted")
	}
	if err := (&conntrack.Filter{Mark: 3, MarkMask: 1}).Validate(model.IPv4); err == nil {
		t.Error("mark outside mask accepted")
	}
	if err := (&conntrack.Filter{OrigDst: ip("198.19.192.10")}).Validate(model.IPv4); err != nil {
		t.Error(err)
	}
}

func TestProtoNames(t *testing.T) {
	for _, p := range []uint8{conntrack.ProtoTCP, conntrack.ProtoUDP, conntrack.ProtoSCTP, conntrack.ProtoICMP, conntrack.ProtoICMPv6, 47} {
		got, err := conntrack.ParseProto(conntrack.ProtoName(p))
		if err != nil || got != p {
			t.Errorf("round trip %d: %d %v", p, got, err)
		}
	}
	for _, bad := range []string{"", "0", "256", "tcpp", "-1"} {
		if _, err := conntrack.ParseProto(bad); err == nil {
			t.Errorf("ParseProto(%q) accepted", bad)
		}
	}
	if conntrack.ProtoNumber(model.SCTP) != 132 || conntrack.ProtoNumber("x") != 0 {
		t.Error("ProtoNumber")
	}
}

func TestFlowString(t *testing.T) {
	fl := natFlow(tcp, clientIP, 40000, ap("198.19.192.10:53"), ap("198.18.1.2:5353"))
	fl.TCPState = 3
	fl.Status |= conntrack.StatusSeenReply | conntrack.StatusAssured
	fl.Mark = 16384
	want := "tcp 30 ESTABLISHED src=198.51.100.7 dst=198.19.192.10 sport=40000 dport=53 src=198.18.1.2 dst=198.51.100.7 sport=5353 dport=40000 [ASSURED] mark=16384"
	if got := fl.String(); got != want {
		t.Errorf("String:\n got %s\nwant %s", got, want)
	}
	un := natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.19.192.10:53"))
	if !strings.Contains(un.String(), "[UNREPLIED]") {
		t.Errorf("unreplied flow: %s", un.String())
	}
}

func TestDeleteMatching(t *testing.T) {
	fake := cttesting.NewFake()
	a := natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353"))
	b := natFlow(udp, clientIP, 2, ap("198.19.192.10:53"), ap("198.18.2.2:5353"))
	c := natFlow(tcp, clientIP, 3, ap("198.19.192.10:53"), ap("198.18.1.2:5353"))
	fake.Add(a, b, c)
	if _, err := conntrack.DeleteMatching(fake, model.IPv4, conntrack.Filter{}); err == nil {
		t.Fatal("empty filter accepted (would flush everything)")
	}
	if _, err := conntrack.DeleteMatching(fake, model.IPv4, conntrack.Filter{ReplySrc: ip("2001:db8:10::1")}); err == nil {
		t.Fatal("wrong-family filter accepted")
	}
	n, err := conntrack.DeleteMatching(fake, model.IPv4, conntrack.Filter{Protocol: udp, ReplySrc: ip("198.18.1.2")})
	if err != nil || n != 1 {
		t.Fatalf("DeleteMatching = %d, %v; want 1", n, err)
	}
	if fake.Has(a) || !fake.Has(b) || !fake.Has(c) {
		t.Fatalf("table after delete: %v", fake.Flows())
	}
}

func TestFakeDeleteChecksID(t *testing.T) {
	fake := cttesting.NewFake()
	old := fake.Add(natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353")))[0]
	// The entry expires and the same tuple is re-created (new id).
	fake.Add(natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.2.2:5353")))
	n, err := fake.Delete([]conntrack.Flow{old})
	if err != nil || n != 0 || !fake.Has(old) {
		t.Fatalf("delete with a stale id removed the new entry: n=%d err=%v", n, err)
	}
}

// Stale is what `proxy conntrack stale` shows: a full plan, no deletion.
func TestPlanStaleForCLI(t *testing.T) {
	cur := snap(model.IPv4, entry{dnsSvc, dnsEPsNew}, entry{otherSvc, otherEPs})
	flows := []conntrack.Flow{
		natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353")),
		natFlow(udp, clientIP, 2, ap("198.19.192.10:53"), ap("198.18.2.2:5353")),
		natFlow(udp, clientIP, 3, ap("198.19.192.20:53"), ap("198.19.192.20:53")),
	}
	p := conntrack.NewPlan(nil, cur, node)
	if got := p.Protocols(); len(got) != 1 || got[0] != udp {
		t.Errorf("protocols %v", got)
	}
	if len(p.Examined()) != 2 {
		t.Errorf("examined %v", p.Examined())
	}
	st := p.Stale(flows)
	if len(st) != 2 || st[0].Reason != conntrack.ReasonEndpointGone || st[0].Service != dnsSvc.Name ||
		st[1].Reason != conntrack.ReasonNotNATed || st[1].Service != otherSvc.Name {
		t.Fatalf("stale: %+v", st)
	}
}

func TestFakeWatch(t *testing.T) {
	fake := cttesting.NewFake()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan conntrack.Event, 10)
	done := make(chan error, 1)
	go func() { done <- fake.Watch(ctx, model.IPv4, []conntrack.EventType{conntrack.EventDestroy}, out) }()
	for fake.Watchers() == 0 {
		time.Sleep(time.Millisecond)
	}
	fl := fake.Add(natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353")))[0]
	fake.Add(natFlow(udp, ip("2001:db8:1::7"), 1, ap("[2001:db8:20::a]:53"), ap("[2001:db8:10::2]:53")))
	if _, err := fake.Delete(fake.Flows()); err != nil {
		t.Fatal(err)
	}
	ev := <-out
	if ev.Type != conntrack.EventDestroy || ev.Flow.ID != fl.ID {
		t.Fatalf("event %+v", ev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-out:
		t.Fatalf("unexpected extra event (IPv6 or NEW must be filtered): %+v", ev)
	default:
	}
}

func TestPlanBadInput(t *testing.T) {
	flows := []conntrack.Flow{natFlow(udp, clientIP, 1, ap("198.19.192.10:53"), ap("198.18.1.2:5353"))}
	if st := conntrack.NewPlan(nil, nil, nil).Stale(flows); len(st) != 0 {
		t.Errorf("nil snapshot plan selected %v", st)
	}
	// A prev of the other family is ignored: everything is examined.
	cur := snap(model.IPv4, entry{dnsSvc, dnsEPsNew})
	p := conntrack.NewPlan(snap(model.IPv6), cur, nil)
	if len(p.Examined()) != 1 || len(p.Stale(flows)) != 1 {
		t.Errorf("examined %v", p.Examined())
	}
}
