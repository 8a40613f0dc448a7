// Package testing holds a stateful fake of routes.Table.
package testing

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/kpr-proxy/kpr/internal/cni/routes"
)

// FakeTable is an in-memory routing table keyed by destination, like the
// kernel's main table with one route per prefix.
type FakeTable struct {
	mu     sync.Mutex
	routes map[netip.Prefix]routes.Route
	// Mutations counts Replace and Delete calls that changed something.
	Mutations int
	// FailReplace makes Replace fail for these destinations.
	FailReplace map[netip.Prefix]bool
}

var _ routes.Table = (*FakeTable)(nil)

// NewFakeTable returns an empty table.
func NewFakeTable() *FakeTable {
	return &FakeTable{routes: map[netip.Prefix]routes.Route{}, FailReplace: map[netip.Prefix]bool{}}
}

// List implements routes.Table, sorted by destination.
func (f *FakeTable) List() ([]routes.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]routes.Route, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out, nil
}

// Replace implements routes.Table.
func (f *FakeTable) Replace(r routes.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailReplace[r.Dst] {
		return fmt.Errorf("fake: injected failure replacing %s", r.Dst)
	}
	if f.routes[r.Dst] != r {
		f.routes[r.Dst] = r
		f.Mutations++
	}
	return nil
}

// Delete implements routes.Table (matching destination, next hop and protocol).
func (f *FakeTable) Delete(r routes.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if have, ok := f.routes[r.Dst]; ok && have == r {
		delete(f.routes, r.Dst)
		f.Mutations++
	}
	return nil
}

// Put adds a route directly (test setup: someone else's route).
func (f *FakeTable) Put(r routes.Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[r.Dst] = r
}

// Get returns the route to dst.
func (f *FakeTable) Get(dst netip.Prefix) (routes.Route, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.routes[dst]
	return r, ok
}
