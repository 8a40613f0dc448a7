package ipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/kpr-proxy/kpr/internal/cni/config"
)

// Pool is one address family's subnet and the gateway address, which is
// never handed to a pod.
type Pool struct {
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// Lease is an address the Allocator handed out.
type Lease struct {
	Pool Pool
	Addr netip.Addr
	// Fresh is true when this call reserved the address, false when the
	// owner already held it. Only fresh leases may be undone on failure:
	// the owner still uses an old one.
	Fresh bool
}

// ExhaustedError says a pool has no free address left.
type ExhaustedError struct {
	Subnet netip.Prefix
	// Usable is the number of addresses pods may get in the subnet.
	Usable uint64
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("no free address in pod subnet %s: all %d usable addresses are allocated", e.Subnet, e.Usable)
}

// Allocator hands out addresses from pools, one per pool per owner.
// Every method must be called with the Store's lock held.
type Allocator struct {
	store Store
	pools []Pool
}

// AllocatorConfig configures NewAllocator.
type AllocatorConfig struct {
	Store Store
	// Pools are usually one IPv4 and/or one IPv6 subnet.
	Pools []Pool
}

// NewAllocator returns an Allocator over cfg.Store.
func NewAllocator(cfg AllocatorConfig) *Allocator {
	return &Allocator{store: cfg.Store, pools: cfg.Pools}
}

// usable returns the first and last address a pod may get in p (network and,
// for IPv4, broadcast addresses excluded) and how many there are, gateway
// excluded. Counts above MaxUint64 saturate; they are never exhausted anyway.
func usable(p Pool) (first, last netip.Addr, n uint64) {
	first = p.Subnet.Addr().Next()
	hostBits := p.Subnet.Addr().BitLen() - p.Subnet.Bits()
	last = config.LastAddr(p.Subnet)
	if p.Subnet.Addr().Is4() {
		last = last.Prev()
	}
	switch {
	case hostBits >= 64:
		n = math.MaxUint64
	case p.Subnet.Addr().Is4():
		n = (uint64(1) << hostBits) - 2
	default:
		n = (uint64(1) << hostBits) - 1
	}
	if inRange(p.Gateway, first, last) && n != math.MaxUint64 {
		n--
	}
	return first, last, n
}

func inRange(a, first, last netip.Addr) bool {
	return a.IsValid() && a.BitLen() == first.BitLen() && !a.Less(first) && !last.Less(a)
}

// Allocate returns one lease per pool for owner: the address the owner
// already holds in that pool, or a newly reserved one. If any pool fails,
// the fresh leases of this call are released again and the error returned
// (an *ExhaustedError when a pool is full).
func (a *Allocator) Allocate(owner Owner) (leases []Lease, err error) {
	all, err := a.store.List()
	if err != nil {
		return nil, fmt.Errorf("listing reservations: %w", err)
	}
	defer func() {
		if err == nil {
			return
		}
		for _, l := range leases {
			if l.Fresh {
				// Best effort: the error that brought us here matters more.
				_ = a.store.Release(l.Addr)
			}
		}
		leases = nil
	}()
	for _, p := range a.pools {
		l, err := a.allocateIn(p, owner, all)
		if err != nil {
			return leases, err
		}
		leases = append(leases, l)
	}
	return leases, nil
}

func (a *Allocator) allocateIn(p Pool, owner Owner, all []Reservation) (Lease, error) {
	first, last, size := usable(p)
	used := make(map[netip.Addr]bool)
	for _, r := range all {
		if !p.Subnet.Contains(r.Addr) {
			continue
		}
		if r.Owner == owner {
			return Lease{Pool: p, Addr: r.Addr}, nil
		}
		if inRange(r.Addr, first, last) && r.Addr != p.Gateway {
			used[r.Addr] = true
		}
	}
	if uint64(len(used)) >= size {
		return Lease{}, &ExhaustedError{Subnet: p.Subnet, Usable: size}
	}

	start := first
	if prev, err := a.store.LastReserved(p.Subnet.Addr().Is6()); err != nil {
		return Lease{}, fmt.Errorf("reading last reserved address: %w", err)
	} else if inRange(prev, first, last) && prev != last {
		start = prev.Next()
	}

	// Walk round-robin from start. At most len(used)+1 candidates can be
	// taken (plus the gateway), so the walk is short however large the pool
	// is; maxSteps bounds it against a Store that refuses addresses List
	// does not show (someone writing the directory behind our back).
	maxSteps := uint64(len(used)) + 64
	if size < maxSteps {
		maxSteps = size + 1
	}
	cand := start
	for step := uint64(0); step <= maxSteps; step++ {
		if cand != p.Gateway && !used[cand] {
			ok, err := a.store.Reserve(Reservation{Addr: cand, Owner: owner})
			if err != nil {
				return Lease{}, fmt.Errorf("reserving %s: %w", cand, err)
			}
			if ok {
				if err := a.store.SetLastReserved(cand); err != nil {
					_ = a.store.Release(cand)
					return Lease{}, fmt.Errorf("recording last reserved address: %w", err)
				}
				return Lease{Pool: p, Addr: cand, Fresh: true}, nil
			}
			used[cand] = true
		}
		if cand == last {
			cand = first
		} else {
			cand = cand.Next()
		}
	}
	return Lease{}, &ExhaustedError{Subnet: p.Subnet, Usable: size}
}

// Lookup returns the reservations owner holds.
func (a *Allocator) Lookup(owner Owner) ([]Reservation, error) {
	all, err := a.store.List()
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, r := range all {
		if r.Owner == owner {
			out = append(out, r)
		}
	}
	return out, nil
}

// Release frees every address owner holds and returns them. Owning nothing
// is not an error (DEL is idempotent).
func (a *Allocator) Release(owner Owner) ([]netip.Addr, error) {
	gone, err := a.releaseWhere(func(r Reservation) bool { return r.Owner == owner })
	return addrsOf(gone), err
}

// ReleaseIfOwned frees those of addrs that owner still holds: the undo of
// a failed ADD, which must not free an address someone else got meanwhile.
func (a *Allocator) ReleaseIfOwned(owner Owner, addrs []netip.Addr) ([]netip.Addr, error) {
	gone, err := a.releaseWhere(func(r Reservation) bool { return r.Owner == owner && slices.Contains(addrs, r.Addr) })
	return addrsOf(gone), err
}

// GC releases every reservation whose owner keep rejects and returns them.
func (a *Allocator) GC(keep func(Owner) bool) ([]Reservation, error) {
	return a.releaseWhere(func(r Reservation) bool { return !keep(r.Owner) })
}

// releaseWhere releases the reservations match selects; it carries on past
// a failing release and reports all failures.
func (a *Allocator) releaseWhere(match func(Reservation) bool) ([]Reservation, error) {
	all, err := a.store.List()
	if err != nil {
		return nil, err
	}
	var gone []Reservation
	var errs []error
	for _, r := range all {
		if !match(r) {
			continue
		}
		if err := a.store.Release(r.Addr); err != nil {
			errs = append(errs, fmt.Errorf("releasing %s: %w", r.Addr, err))
			continue
		}
		gone = append(gone, r)
	}
	return gone, errors.Join(errs...)
}

func addrsOf(rs []Reservation) []netip.Addr {
	var out []netip.Addr
	for _, r := range rs {
		out = append(out, r.Addr)
	}
	return out
}

// Usage is how full a pool is.
type Usage struct {
	Pool   Pool
	Used   uint64
	Usable uint64
}

// Usage reports per-pool occupancy (for STATUS).
func (a *Allocator) Usage() ([]Usage, error) {
	all, err := a.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]Usage, 0, len(a.pools))
	for _, p := range a.pools {
		first, last, size := usable(p)
		u := Usage{Pool: p, Usable: size}
		for _, r := range all {
			if inRange(r.Addr, first, last) && r.Addr != p.Gateway {
				u.Used++
			}
		}
		out = append(out, u)
	}
	return out, nil
}
