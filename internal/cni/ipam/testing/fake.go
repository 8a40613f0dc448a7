// Package testing holds an in-memory ipam.Store for unit tests.
package testing

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/kpr-proxy/kpr/internal/cni/ipam"
)

// FakeStore is a stateful in-memory ipam.Store. Its lock is a real mutex,
// so concurrent allocators in one test contend as plugin processes would.
type FakeStore struct {
	lockCh chan struct{}

	mu   sync.Mutex
	res  map[netip.Addr]ipam.Owner
	last map[bool]netip.Addr

	// FailReserveAfter, when > 0, makes the Nth and later Reserve calls
	// fail with an error (to exercise rollback paths).
	FailReserveAfter int
	reserveCalls     int
}

var _ ipam.Store = (*FakeStore)(nil)

// NewFakeStore returns an empty store.
func NewFakeStore() *FakeStore {
	return &FakeStore{
		lockCh: make(chan struct{}, 1),
		res:    map[netip.Addr]ipam.Owner{},
		last:   map[bool]netip.Addr{},
	}
}

// Lock implements ipam.Store.
func (f *FakeStore) Lock(ctx context.Context) error {
	select {
	case f.lockCh <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ipam.ErrLockTimeout, ctx.Err())
	}
}

// Unlock implements ipam.Store.
func (f *FakeStore) Unlock() error {
	select {
	case <-f.lockCh:
		return nil
	default:
		return fmt.Errorf("fake store: unlock of unlocked store")
	}
}

// List implements ipam.Store, sorted by address for stable tests.
func (f *FakeStore) List() ([]ipam.Reservation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ipam.Reservation, 0, len(f.res))
	for a, o := range f.res {
		out = append(out, ipam.Reservation{Addr: a, Owner: o})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}

// Reserve implements ipam.Store.
func (f *FakeStore) Reserve(r ipam.Reservation) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserveCalls++
	if f.FailReserveAfter > 0 && f.reserveCalls >= f.FailReserveAfter {
		return false, fmt.Errorf("fake store: injected Reserve failure")
	}
	if _, taken := f.res[r.Addr]; taken {
		return false, nil
	}
	f.res[r.Addr] = r.Owner
	return true, nil
}

// Release implements ipam.Store.
func (f *FakeStore) Release(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.res, a)
	return nil
}

// LastReserved implements ipam.Store.
func (f *FakeStore) LastReserved(is6 bool) (netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last[is6], nil
}

// SetLastReserved implements ipam.Store.
func (f *FakeStore) SetLastReserved(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last[a.Is6()] = a
	return nil
}

// Close implements ipam.Store.
func (f *FakeStore) Close() error { return nil }

// Put adds a reservation directly (test setup: simulate a foreign writer).
func (f *FakeStore) Put(a netip.Addr, o ipam.Owner) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.res[a] = o
}
