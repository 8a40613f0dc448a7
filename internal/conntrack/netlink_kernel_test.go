package conntrack_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
)

// waitEvent reads events until one matches, failing after a generous
// deadline (events are asynchronous; this is not a speed assertion).
func waitEvent(t *testing.T, ch <-chan conntrack.Event, match func(conntrack.Event) bool) conntrack.Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-ch:
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatal("expected conntrack event did not arrive")
		}
	}
}

// The read helpers of the debug CLI against the real kernel: list with
// tuples, state, timeout and mark; delete by id (a wrong id deletes
// nothing); delete by filter; events.
func TestKernelListDeleteWatch(t *testing.T) {
	l := newLab(t, model.IPv4)
	l.udpServer(l.srv1, "srv1", 5353)
	l.tcpServer(l.srv1, 5353)
	frontend := netip.MustParseAddrPort("198.19.192.57:53")
	for _, p := range []string{"udp", "tcp"} {
		l.iptables("-t", "nat", "-A", "PREROUTING", "-d", frontend.Addr().String(), "-p", p, "--dport", "53",
			"-j", "DNAT", "--to-destination", netip.AddrPortFrom(l.srv1IP, 5353).String())
	}
	l.iptables("-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-j", "CONNMARK", "--set-mark", "0x4000")
	ct := l.netlink()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan conntrack.Event, 64)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- ct.Watch(ctx, model.IPv4, []conntrack.EventType{conntrack.EventNew, conntrack.EventDestroy}, events)
	}()
	// Watch joins its groups asynchronously; keep generating NEW events
	// (fresh source ports) until one is seen, so the test does not depend
	// on how quickly the subscription is in place.
	var first conntrack.Event
	for port, got := 41000, false; !got; port++ {
		if port > 41100 {
			t.Fatal("no NEW event after 100 flows")
		}
		if ans := l.udpClient(port).ask(frontend, answer); ans != "srv1" {
			t.Fatalf("answer %q", ans)
		}
		select {
		case first = <-events:
			got = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	if first.Type != conntrack.EventNew || first.Flow.Protocol != udp || first.Flow.Orig.DstAddrPort() != frontend {
		t.Fatalf("first event %v %s", first.Type, first.Flow.String())
	}

	c := l.udpClient(40060)
	if ans := c.ask(frontend, answer); ans != "srv1" {
		t.Fatalf("answer %q", ans)
	}
	waitEvent(t, events, func(ev conntrack.Event) bool {
		return ev.Type == conntrack.EventNew && ev.Flow.Orig.SrcPort == 40060
	})
	l.tcpConnect(frontend)

	flows, err := ct.List(model.IPv4, conntrack.Filter{OrigDst: frontend.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	var udpFlow, tcpFlow *conntrack.Flow
	for i := range flows {
		fl := &flows[i]
		switch {
		case fl.Protocol == udp && fl.Orig.SrcPort == 40060:
			udpFlow = fl
		case fl.Protocol == tcp:
			tcpFlow = fl
		}
	}
	if udpFlow == nil || tcpFlow == nil {
		t.Fatalf("flows: %v", flows)
	}
	if udpFlow.ID == 0 || udpFlow.Timeout == 0 || udpFlow.Status&conntrack.StatusSeenReply == 0 ||
		udpFlow.Status&conntrack.StatusDstNAT == 0 || udpFlow.Reply.SrcAddrPort() != netip.AddrPortFrom(l.srv1IP, 5353) ||
		udpFlow.Orig.Src != l.clientIP || udpFlow.Reply.DstPort != 40060 {
		t.Errorf("UDP flow fields: %+v", *udpFlow)
	}
	if conntrack.TCPStateName(tcpFlow.TCPState) != "ESTABLISHED" || tcpFlow.Mark != 0x4000 {
		t.Errorf("TCP flow: state %s mark %#x (%s)", conntrack.TCPStateName(tcpFlow.TCPState), tcpFlow.Mark, tcpFlow.String())
	}
	marked, err := ct.List(model.IPv4, conntrack.Filter{Mark: 0x4000, MarkMask: 0x4000})
	if err != nil || len(marked) != 1 || marked[0].Protocol != tcp {
		t.Errorf("mark filter: %v %v", marked, err)
	}

	// A wrong id (the entry was "re-created" since the dump) deletes nothing.
	wrong := *udpFlow
	wrong.ID++
	if n, err := ct.Delete([]conntrack.Flow{wrong}); err != nil || n != 0 {
		t.Fatalf("delete with wrong id: n=%d err=%v", n, err)
	}
	if got := find(t, ct, model.IPv4, udp, frontend, 40060); len(got) != 1 {
		t.Fatalf("entry gone after a wrong-id delete: %v", got)
	}
	if n, err := ct.Delete([]conntrack.Flow{*udpFlow}); err != nil || n != 1 {
		t.Fatalf("delete: n=%d err=%v", n, err)
	}
	waitEvent(t, events, func(ev conntrack.Event) bool {
		return ev.Type == conntrack.EventDestroy && ev.Flow.Orig.SrcPort == 40060 && ev.Flow.ID == udpFlow.ID
	})
	// Already gone: not an error.
	if n, err := ct.Delete([]conntrack.Flow{*udpFlow}); err != nil || n != 0 {
		t.Fatalf("second delete: n=%d err=%v", n, err)
	}

	n, err := conntrack.DeleteMatching(ct, model.IPv4, conntrack.Filter{Protocol: tcp, OrigDst: frontend.Addr(), OrigDstPort: 53})
	if err != nil || n != 1 {
		t.Fatalf("DeleteMatching: %d %v", n, err)
	}
	if got := find(t, ct, model.IPv4, tcp, frontend, 0); len(got) != 0 {
		t.Fatalf("TCP entry survived DeleteMatching: %v", got)
	}

	cancel()
	if err := <-watchDone; err != nil {
		t.Fatalf("Watch: %v", err)
	}
}

func TestKernelBadInput(t *testing.T) {
	l := newLab(t, model.IPv4)
	ct := l.netlink()
	if _, err := ct.List(0, conntrack.Filter{}); err == nil {
		t.Error("family 0 accepted")
	}
	if _, err := ct.List(model.IPv4, conntrack.Filter{OrigDst: ip("2001:db8:20::1")}); err == nil {
		t.Error("IPv6 filter on IPv4 accepted")
	}
	bad := conntrack.Flow{Family: model.IPv4, Protocol: udp, Orig: conntrack.Tuple{Src: ip("2001:db8:1::1"), Dst: ip("198.19.192.1")}}
	if n, err := ct.Delete([]conntrack.Flow{bad}); err == nil || n != 0 {
		t.Errorf("mixed-family flow: n=%d err=%v", n, err)
	}
	if err := ct.Watch(context.Background(), 0, []conntrack.EventType{99}, make(chan conntrack.Event)); err == nil {
		t.Error("Watch with no valid event type accepted")
	}
}
