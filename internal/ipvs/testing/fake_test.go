package ipvstest

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// The fake answers with the errors the kernel's IPVS netlink interface
// gives (net/netfilter/ipvs/ip_vs_ctl.c): EEXIST for duplicates, ESRCH for
// a missing service, ENOENT for a missing destination or scheduler.
func TestFakeIPVSErrors(t *testing.T) {
	f := NewFakeIPVS()
	svc := &kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.19.192.10"), Port: 80, Scheduler: "rr"}
	d := &kernel.Destination{Addr: netip.MustParseAddr("198.18.1.2"), Port: 8080, Weight: 1}
	check := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	check("update missing service", f.UpdateService(svc), syscall.ESRCH)
	check("dest of missing service", f.NewDestination(svc, d), syscall.ESRCH)
	check("unknown scheduler", f.NewService(&kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: svc.Addr, Port: 1, Scheduler: "nope"}), syscall.ENOENT)
	check("family mismatch", f.NewService(&kernel.Service{Family: model.IPv6, Protocol: model.TCP, Addr: svc.Addr, Port: 1, Scheduler: "rr"}), syscall.EINVAL)
	if err := f.NewService(svc); err != nil {
		t.Fatal(err)
	}
	check("duplicate service", f.NewService(svc), syscall.EEXIST)
	check("update missing dest", f.UpdateDestination(svc, d), syscall.ENOENT)
	if err := f.NewDestination(svc, d); err != nil {
		t.Fatal(err)
	}
	check("duplicate dest", f.NewDestination(svc, d), syscall.EEXIST)
	check("IPv6 dest in IPv4 service", f.NewDestination(svc, &kernel.Destination{Addr: netip.MustParseAddr("2001:db8::1"), Port: 1}), syscall.EAFNOSUPPORT)
	svcs, _ := f.GetServices()
	if len(svcs) != 1 || svcs[0].Flags&kernel.FlagHashed == 0 {
		t.Errorf("listed services do not carry the hashed flag: %v", svcs)
	}
	if f.Mutations() != 2 {
		t.Errorf("mutations %v", f.Calls())
	}
	f.FailOn("DelService", nil, syscall.EBUSY)
	check("injected", f.DelService(svc), syscall.EBUSY)
	f.FailOn("DelService", nil, nil)
	if err := f.DelService(svc); err != nil || f.Dump() != "" {
		t.Errorf("delete: %v\n%s", err, f.Dump())
	}
	_ = f.SetTimeouts(kernel.Timeouts{TCP: time.Minute})
	_ = f.SetTimeouts(kernel.Timeouts{UDP: time.Second})
	if to, _ := f.GetTimeouts(); to.TCP != time.Minute || to.UDP != time.Second {
		t.Errorf("zero timeouts must keep the current value: %+v", to)
	}
}

func TestFakeLinks(t *testing.T) {
	f := NewFakeLinks()
	f.SetLink("eth0", netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("2001:db8:1::11"))
	if _, err := f.EnsureLink("kpr-ipvs0"); err != nil {
		t.Fatal(err)
	}
	_ = f.AddAddr("kpr-ipvs0", netip.MustParseAddr("198.19.192.10"))
	if a, _ := f.NodeAddrs(model.IPv4, "kpr-ipvs0"); len(a) != 1 || a[0] != netip.MustParseAddr("192.0.2.11") {
		t.Errorf("NodeAddrs v4 = %v", a)
	}
	if a, _ := f.NodeAddrs(model.IPv6, "kpr-ipvs0"); len(a) != 1 || a[0] != netip.MustParseAddr("2001:db8:1::11") {
		t.Errorf("NodeAddrs v6 = %v (no loopback, no link-local)", a)
	}
	if err := f.AddAddr("nope", netip.MustParseAddr("198.19.192.10")); err == nil {
		t.Error("address added to a missing link")
	}
}
