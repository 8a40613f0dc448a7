package kernel_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// TestMain guards the house rule: the root namespace's links and addresses
// (read-only listing) are the same before and after the run.
func TestMain(m *testing.M) { netns.GuardRoot(m, netns.Addresses) }

func in(t *testing.T, n *netns.NS, fn func() error) {
	t.Helper()
	if err := n.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// TestLinksOnVeth runs the real netlink Links in a namespace, with a veth
// standing in for the dummy link this kernel lacks.
func TestLinksOnVeth(t *testing.T) {
	n := netns.New(t, "kpr-links")
	n.MustExec("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	n.MustExec("ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")
	n.MustExec("ip", "addr", "add", "2001:db8:1::11/64", "dev", "eth0", "nodad")
	n.MustExec("ip", "link", "set", "eth0", "up")
	l := &kernel.NetlinkLinks{NewLink: func(name string) netlink.Link { return kernel.VethLink(name, name+"p") }}
	const link = "kpr-ipvs0"
	v4 := []netip.Addr{netip.MustParseAddr("198.19.192.10"), netip.MustParseAddr("203.0.113.7")}
	v6 := netip.MustParseAddr("2001:db8:20::a")
	in(t, n, func() error {
		if ok, err := l.LinkExists(link); ok || err != nil {
			return fmt.Errorf("LinkExists before creation: %v %v", ok, err)
		}
		if existed, err := l.EnsureLink(link); existed || err != nil {
			return fmt.Errorf("EnsureLink: %v %v", existed, err)
		}
		if existed, err := l.EnsureLink(link); !existed || err != nil {
			return fmt.Errorf("second EnsureLink: %v %v", existed, err)
		}
		for _, a := range append(v4, v6, v4[0]) { // adding twice is fine
			if err := l.AddAddr(link, a); err != nil {
				return err
			}
		}
		got, err := l.Addrs(link, model.IPv4)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(v4) {
			return fmt.Errorf("Addrs v4 = %v %v, want %v", got, err, v4)
		}
		got, err = l.Addrs(link, model.IPv6)
		if err != nil || len(got) != 1 || got[0] != v6 {
			return fmt.Errorf("Addrs v6 = %v %v", got, err)
		}
		// Node addresses: eth0's, not the link's, not loopback or
		// link-local.
		got, err = l.NodeAddrs(model.IPv4, link)
		if err != nil || fmt.Sprint(got) != "[192.0.2.11]" {
			return fmt.Errorf("NodeAddrs v4 = %v %v", got, err)
		}
		got, err = l.NodeAddrs(model.IPv6, link)
		if err != nil || fmt.Sprint(got) != "[2001:db8:1::11]" {
			return fmt.Errorf("NodeAddrs v6 = %v %v", got, err)
		}
		if err := l.DelAddr(link, v4[0]); err != nil {
			return err
		}
		if err := l.DelAddr(link, v4[0]); err != nil {
			return fmt.Errorf("deleting an absent address: %v", err)
		}
		got, _ = l.Addrs(link, model.IPv4)
		if fmt.Sprint(got) != "[203.0.113.7]" {
			return fmt.Errorf("after DelAddr: %v", got)
		}
		return nil
	})
	// The kernel sees the addresses as local while the link is down.
	if out := n.MustExec("ip", "route", "show", "table", "local", "dev", link); !strings.Contains(out, "local 203.0.113.7") {
		t.Fatalf("no local route for a bound address:\n%s", out)
	}
	if out := n.MustExec("ip", "link", "show", link); !strings.Contains(out, "state DOWN") {
		t.Fatalf("link is not down:\n%s", out)
	}
	in(t, n, func() error {
		if err := l.DeleteLink(link); err != nil {
			return err
		}
		if err := l.DeleteLink(link); err != nil {
			return fmt.Errorf("deleting a missing link: %v", err)
		}
		if ok, _ := l.LinkExists(link); ok {
			return errors.New("link still exists")
		}
		if err := l.DelAddr(link, v4[1]); err != nil {
			return fmt.Errorf("DelAddr on a missing link: %v", err)
		}
		if _, err := l.Addrs(link, model.IPv4); err == nil {
			return errors.New("Addrs of a missing link succeeded")
		}
		return nil
	})
}

// TestDummyIsTheDefault checks that production's link kind is a dummy; on
// this kernel (no dummy driver) creating it must fail with a clear error.
func TestDummyIsTheDefault(t *testing.T) {
	if _, ok := kernel.DummyLink("x").(*netlink.Dummy); !ok {
		t.Fatal("DummyLink is not a dummy")
	}
	n := netns.New(t, "kpr-dummy")
	l := &kernel.NetlinkLinks{}
	in(t, n, func() error {
		_, err := l.EnsureLink("kpr-ipvs0")
		if err == nil {
			t.Log("this kernel has the dummy driver; the link was created")
			return nil
		}
		if !strings.Contains(err.Error(), "creating link kpr-ipvs0") {
			return fmt.Errorf("unclear error: %v", err)
		}
		return nil
	})
}

// TestNewHandleWithoutIPVS: on a kernel without IPVS, NewHandle must say so
// instead of returning a handle that answers every request with nothing.
func TestNewHandleWithoutIPVS(t *testing.T) {
	n := netns.New(t, "kpr-ipvs")
	in(t, n, func() error {
		if _, err := netlink.GenlFamilyGet("IPVS"); err == nil {
			t.Skip("this kernel has IPVS; the VM e2e covers the real handle")
		}
		h, err := kernel.NewHandle("")
		if err == nil {
			h.Close()
			return errors.New("NewHandle succeeded without IPVS")
		}
		if !errors.Is(err, kernel.ErrNoIPVS) {
			return fmt.Errorf("error %v is not ErrNoIPVS", err)
		}
		return nil
	})
}

func TestProcSysctlInNamespace(t *testing.T) {
	n := netns.New(t, "kpr-sysctl")
	s := kernel.ProcSysctl{}
	in(t, n, func() error {
		// ip_forward is per namespace: a fresh one starts at 0.
		if v, err := s.Get("net/ipv4/ip_forward"); err != nil || v != "0" {
			return fmt.Errorf("ip_forward = %q %v", v, err)
		}
		if err := s.Set("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if v, _ := s.Get("net/ipv4/ip_forward"); v != "1" {
			return fmt.Errorf("ip_forward after Set = %q", v)
		}
		if _, err := s.Get("net/ipv4/vs/conntrack"); err == nil {
			t.Log("this kernel has IPVS sysctls")
		}
		return nil
	})
	if out := n.MustExec("cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Fatalf("namespace ip_forward = %q", out)
	}
	// Path cleaning keeps names inside the root.
	root := t.TempDir()
	if err := (kernel.ProcSysctl{Root: root + "/sys"}).Set("../../escape", "1"); err == nil {
		t.Fatal("write outside the root's tree succeeded")
	}
	if _, err := os.Stat(root + "/escape"); err == nil {
		t.Fatal("name escaped the root")
	}
}

func TestKeyAndServiceStrings(t *testing.T) {
	k := kernel.Key{Protocol: model.TCP, Addr: netip.MustParseAddr("2001:db8:20::a"), Port: 80}
	if k.String() != "TCP [2001:db8:20::a]:80" {
		t.Errorf("Key.String = %q", k)
	}
	s := kernel.Service{Family: model.IPv4, Protocol: model.UDP, Addr: netip.MustParseAddr("198.19.192.53"), Port: 53, Scheduler: "mh",
		Flags: kernel.FlagPersistent | kernel.FlagSched2 | kernel.FlagHashed, Timeout: 60}
	if s.String() != "UDP 198.19.192.53:53 mh persistent 60 flags 0x10" {
		t.Errorf("Service.String = %q", s.String())
	}
	o := s
	o.Flags &^= kernel.FlagHashed
	if !s.SameSettings(&o) {
		t.Error("the hashed flag made settings differ")
	}
	o.Timeout = 61
	if s.SameSettings(&o) {
		t.Error("timeout change not seen")
	}
}
