package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/internal/cni/ipam"
	fakeipam "github.com/kpr-proxy/kpr/internal/cni/ipam/testing"
)

// storeContract runs the same checks against every Store implementation,
// so the fake used by unit tests behaves like the disk store.
func storeContract(t *testing.T, st ipam.Store) {
	t.Helper()
	a := netip.MustParseAddr("198.18.1.2")
	b := netip.MustParseAddr("2001:db8:10:1::2")
	o := ipam.Owner{ContainerID: "abc", IfName: "eth0"}

	if err := st.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer st.Unlock()

	if ok, err := st.Reserve(ipam.Reservation{Addr: a, Owner: o}); !ok || err != nil {
		t.Fatalf("Reserve = %v, %v", ok, err)
	}
	if ok, err := st.Reserve(ipam.Reservation{Addr: a, Owner: ipam.Owner{ContainerID: "other", IfName: "eth0"}}); ok || err != nil {
		t.Fatalf("Reserve of a taken address = %v, %v; want false, nil", ok, err)
	}
	if ok, err := st.Reserve(ipam.Reservation{Addr: b, Owner: o}); !ok || err != nil {
		t.Fatalf("Reserve v6 = %v, %v", ok, err)
	}
	list, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Addr.Less(list[j].Addr) })
	want := []ipam.Reservation{{Addr: a, Owner: o}, {Addr: b, Owner: o}}
	if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
		t.Fatalf("List = %+v, want %+v", list, want)
	}

	if got, err := st.LastReserved(false); err != nil || got.IsValid() {
		t.Fatalf("LastReserved on empty = %v, %v", got, err)
	}
	if err := st.SetLastReserved(a); err != nil {
		t.Fatal(err)
	}
	if err := st.SetLastReserved(b); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.LastReserved(false); got != a {
		t.Fatalf("LastReserved(v4) = %v, want %v", got, a)
	}
	if got, _ := st.LastReserved(true); got != b {
		t.Fatalf("LastReserved(v6) = %v, want %v", got, b)
	}

	if err := st.Release(a); err != nil {
		t.Fatal(err)
	}
	if err := st.Release(a); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if list, _ := st.List(); len(list) != 1 || list[0].Addr != b {
		t.Fatalf("List after Release = %+v", list)
	}
}

func TestFakeStoreContract(t *testing.T) { storeContract(t, fakeipam.NewFakeStore()) }

func TestDiskStoreContract(t *testing.T) {
	st, err := ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: filepath.Join(t.TempDir(), "net")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	storeContract(t, st)
}

func TestDiskStoreLayoutIsReadable(t *testing.T) {
	dir := t.TempDir()
	st, err := ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := netip.MustParseAddr("198.18.1.7")
	if _, err := st.Reserve(ipam.Reservation{Addr: a, Owner: ipam.Owner{ContainerID: "cid", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "198.18.1.7"))
	if err != nil || string(data) != "cid\neth0\n" {
		t.Fatalf("reservation file = %q, %v", data, err)
	}
	// No temporaries left behind.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Fatalf("dir holds %v, want lock and 198.18.1.7", names)
	}
	// An operator deleting the file frees the address.
	os.Remove(filepath.Join(dir, "198.18.1.7"))
	if list, _ := st.List(); len(list) != 0 {
		t.Fatalf("List = %+v after manual removal", list)
	}
}

func TestDiskStoreLockTimeout(t *testing.T) {
	dir := t.TempDir()
	a, err := ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Lock(ctx); !errors.Is(err, ipam.ErrLockTimeout) {
		t.Fatalf("Lock while held elsewhere = %v, want ErrLockTimeout", err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(context.Background()); err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	b.Unlock()
}

// Separately opened stores (as separate plugin processes have) on one
// directory, allocating at once, never hand out an address twice.
func TestDiskStoreParallelAllocators(t *testing.T) {
	dir := t.TempDir()
	pools := []ipam.Pool{pool("198.18.1.0/24", "198.18.1.1"), pool("2001:db8:10:1::/64", "2001:db8:10:1::1")}
	const n = 40
	var wg sync.WaitGroup
	got := make([][]ipam.Lease, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: dir})
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			if err := st.Lock(context.Background()); err != nil {
				errs <- err
				return
			}
			defer st.Unlock()
			got[i], err = ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: pools}).Allocate(owner(i))
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i, ls := range got {
		if len(ls) != 2 {
			t.Fatalf("owner %d got %d leases", i, len(ls))
		}
		for _, l := range ls {
			if seen[l.Addr] {
				t.Fatalf("address %s handed out twice", l.Addr)
			}
			seen[l.Addr] = true
		}
	}
}
