// Package ipam is podnet's node-local address management: a Store (the
// persistence boundary, one record per allocated address) and an Allocator
// (pure logic over a Store: pick the next free address per pool, give the same
// address back to the same container and interface, release, garbage-collect).
//
// Several plugin processes run at once on a node (the runtime starts one per
// pod), so the Store carries a cross-process lock; every Allocator call must
// be made with that lock held.
package ipam

import (
	"context"
	"errors"
	"net/netip"
)

// Owner identifies an attachment: the CNI (CNI_CONTAINERID, CNI_IFNAME) pair.
type Owner struct {
	ContainerID string
	IfName      string
}

// Reservation is one allocated address and who holds it.
type Reservation struct {
	Addr  netip.Addr
	Owner Owner
}

// ErrLockTimeout is returned by Store.Lock when another process holds the
// lock for longer than the caller's context allows.
var ErrLockTimeout = errors.New("timed out waiting for the IPAM lock")

// Store persists reservations. Implementations: DiskStore (files + flock)
// and the fake in ipam/testing.
type Store interface {
	// Lock takes the store-wide lock, waiting until ctx is done (then it
	// returns an error wrapping ErrLockTimeout).
	Lock(ctx context.Context) error
	// Unlock releases the lock taken by Lock.
	Unlock() error
	// List returns every reservation.
	List() ([]Reservation, error)
	// Reserve records r. It returns false (and no error) when the address is
	// already reserved by anyone.
	Reserve(r Reservation) (bool, error)
	// Release forgets the reservation of addr; releasing a free address is
	// not an error.
	Release(addr netip.Addr) error
	// LastReserved returns the address most recently handed out in the
	// family of the given address's kind (is6), or the zero Addr.
	LastReserved(is6 bool) (netip.Addr, error)
	// SetLastReserved remembers addr as the most recent allocation of its
	// family, so the next allocation starts after it (round-robin: a freed
	// address is not reused at once, which keeps stale conntrack entries and
	// ARP caches of a deleted pod from hitting the next one).
	SetLastReserved(addr netip.Addr) error
	// Close releases resources (the lock file); it does not unlock.
	Close() error
}
