package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/kpr-proxy/kpr/internal/cni/ipam"
	fakeipam "github.com/kpr-proxy/kpr/internal/cni/ipam/testing"
)

func pool(subnet, gw string) ipam.Pool {
	return ipam.Pool{Subnet: netip.MustParsePrefix(subnet), Gateway: netip.MustParseAddr(gw)}
}

func owner(i int) ipam.Owner { return ipam.Owner{ContainerID: fmt.Sprintf("c%03d", i), IfName: "eth0"} }

func mustAllocate(t *testing.T, a *ipam.Allocator, o ipam.Owner) []ipam.Lease {
	t.Helper()
	l, err := a.Allocate(o)
	if err != nil {
		t.Fatalf("Allocate(%v): %v", o, err)
	}
	return l
}

func TestAllocateSequentialSkipsGateway(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	for i, want := range []string{"198.18.1.2", "198.18.1.3", "198.18.1.4"} {
		l := mustAllocate(t, a, owner(i))
		if len(l) != 1 || l[0].Addr.String() != want || !l[0].Fresh {
			t.Fatalf("lease %d = %+v, want fresh %s", i, l, want)
		}
	}
}

func TestSameOwnerGetsSameAddress(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	first := mustAllocate(t, a, owner(1))
	mustAllocate(t, a, owner(2))
	again := mustAllocate(t, a, owner(1))
	if again[0].Addr != first[0].Addr || again[0].Fresh {
		t.Fatalf("second Allocate for the same owner = %+v, want non-fresh %s", again[0], first[0].Addr)
	}
	// Same container, other interface: a different attachment.
	other := mustAllocate(t, a, ipam.Owner{ContainerID: "c001", IfName: "net1"})
	if other[0].Addr == first[0].Addr {
		t.Fatalf("other interface of the same container got the same address %s", other[0].Addr)
	}
}

func TestReleaseAndRoundRobin(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	l1 := mustAllocate(t, a, owner(1)) // .2
	mustAllocate(t, a, owner(2))       // .3
	freed, err := a.Release(owner(1))
	if err != nil || len(freed) != 1 || freed[0] != l1[0].Addr {
		t.Fatalf("Release = %v, %v; want [%s]", freed, err, l1[0].Addr)
	}
	// The freed .2 is not reused at once: allocation continues after .3.
	l3 := mustAllocate(t, a, owner(3))
	if got := l3[0].Addr.String(); got != "198.18.1.4" {
		t.Fatalf("after release got %s, want 198.18.1.4 (round-robin)", got)
	}
	// Releasing again, or an owner that holds nothing, is fine.
	if freed, err := a.Release(owner(1)); err != nil || len(freed) != 0 {
		t.Fatalf("second Release = %v, %v", freed, err)
	}
}

func TestExhaustionAndWrapAround(t *testing.T) {
	st := fakeipam.NewFakeStore()
	// /29: .0 network, .1 gateway, .7 broadcast: .2-.6 usable = 5.
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.3.0/29", "198.18.3.1")}})
	for i := 0; i < 5; i++ {
		mustAllocate(t, a, owner(i))
	}
	_, err := a.Allocate(owner(99))
	var ex *ipam.ExhaustedError
	if !errors.As(err, &ex) || ex.Usable != 5 || ex.Subnet.String() != "198.18.3.0/29" {
		t.Fatalf("6th Allocate error = %v, want ExhaustedError{198.18.3.0/29, 5}", err)
	}
	if list, _ := st.List(); len(list) != 5 {
		t.Fatalf("failed Allocate changed the store: %d reservations", len(list))
	}
	// Free .3; the next allocation wraps around past .6 and finds it.
	if _, err := a.Release(owner(1)); err != nil {
		t.Fatal(err)
	}
	l := mustAllocate(t, a, owner(100))
	if l[0].Addr.String() != "198.18.3.3" {
		t.Fatalf("after wrap got %s, want 198.18.3.3", l[0].Addr)
	}
}

func TestGatewayNotFirst(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.4.0/30", "198.18.4.2")}})
	l := mustAllocate(t, a, owner(0))
	if l[0].Addr.String() != "198.18.4.1" {
		t.Fatalf("got %s, want 198.18.4.1", l[0].Addr)
	}
	if _, err := a.Allocate(owner(1)); err == nil {
		t.Fatal("a /30 with a gateway has room for one pod; second Allocate succeeded")
	}
}

func TestDualStackAndRollback(t *testing.T) {
	st := fakeipam.NewFakeStore()
	pools := []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1"), pool("2001:db8:10:1::/64", "2001:db8:10:1::1")}
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: pools})
	l := mustAllocate(t, a, owner(1))
	if len(l) != 2 || l[0].Addr.String() != "198.18.1.2" || l[1].Addr.String() != "2001:db8:10:1::2" {
		t.Fatalf("dual-stack leases = %+v", l)
	}
	// Second call of a new owner: the IPv6 Reserve fails; the fresh IPv4
	// address of that call must be released again.
	st.FailReserveAfter = 4 // calls: v4(1), v6(2), v4(3), v6(4) fails
	if _, err := a.Allocate(owner(2)); err == nil {
		t.Fatal("Allocate with failing IPv6 Reserve succeeded")
	}
	list, _ := st.List()
	if len(list) != 2 {
		t.Fatalf("rollback left %d reservations, want the first owner's 2: %+v", len(list), list)
	}
}

func TestRollbackKeepsOwnersOldAddress(t *testing.T) {
	st := fakeipam.NewFakeStore()
	// IPv4 pool has an existing lease for the owner; IPv6 pool is full.
	pools := []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1"), pool("2001:db8:10:1::/126", "2001:db8:10:1::1")}
	st.Put(netip.MustParseAddr("198.18.1.9"), owner(1))
	st.Put(netip.MustParseAddr("2001:db8:10:1::2"), owner(7))
	st.Put(netip.MustParseAddr("2001:db8:10:1::3"), owner(8))
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: pools})
	_, err := a.Allocate(owner(1))
	var ex *ipam.ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("err = %v, want ExhaustedError", err)
	}
	if r, _ := a.Lookup(owner(1)); len(r) != 1 || r[0].Addr.String() != "198.18.1.9" {
		t.Fatalf("owner's pre-existing address was released on rollback: %+v", r)
	}
}

func TestHugeIPv6Pool(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("2001:db8:10::/56", "2001:db8:10::1")}})
	for i := 0; i < 3; i++ {
		mustAllocate(t, a, owner(i))
	}
	u, err := a.Usage()
	if err != nil || len(u) != 1 || u[0].Used != 3 || u[0].Usable < 1<<63 {
		t.Fatalf("Usage = %+v, %v", u, err)
	}
}

func TestGC(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	for i := 0; i < 4; i++ {
		mustAllocate(t, a, owner(i))
	}
	gone, err := a.GC(func(o ipam.Owner) bool { return o == owner(0) || o == owner(2) })
	if err != nil || len(gone) != 2 {
		t.Fatalf("GC = %+v, %v", gone, err)
	}
	list, _ := st.List()
	if len(list) != 2 || list[0].Owner != owner(0) || list[1].Owner != owner(2) {
		t.Fatalf("after GC: %+v", list)
	}
}

// Parallel allocators serialised by the store lock never share an address.
func TestConcurrentAllocateDistinct(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	const n = 50
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := st.Lock(context.Background()); err != nil {
				errs <- err
				return
			}
			defer st.Unlock()
			l, err := a.Allocate(owner(i))
			if err != nil {
				errs <- err
				return
			}
			got[i] = l[0].Addr
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[netip.Addr]int{}
	for i, a := range got {
		if j, dup := seen[a]; dup {
			t.Fatalf("owners %d and %d both got %s", j, i, a)
		}
		seen[a] = i
	}
}

func TestReleaseIfOwned(t *testing.T) {
	st := fakeipam.NewFakeStore()
	a := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1")}})
	l1 := mustAllocate(t, a, owner(1))
	l2 := mustAllocate(t, a, owner(2))
	freed, err := a.ReleaseIfOwned(owner(1), []netip.Addr{l1[0].Addr, l2[0].Addr})
	if err != nil || len(freed) != 1 || freed[0] != l1[0].Addr {
		t.Fatalf("ReleaseIfOwned = %v, %v; want only %s", freed, err, l1[0].Addr)
	}
	if r, _ := a.Lookup(owner(2)); len(r) != 1 {
		t.Fatalf("other owner's address was released")
	}
}
