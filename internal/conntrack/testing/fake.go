// Package testing holds stateful fakes of conntrack.Interface,
// conntrack.Watcher and conntrack.Sysctl for unit tests.
package testing

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"sync"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Fake is an in-memory conntrack table. Like the kernel it addresses an
// entry by family, protocol, original tuple and zone, checks the id on
// delete when one is given, and emits events to watchers.
type Fake struct {
	mu     sync.Mutex
	flows  map[flowKey]conntrack.Flow
	nextID uint32
	subs   map[*sub]struct{}

	// ListCalls records the arguments of every List call.
	ListCalls []ListCall
	// DeleteCalls counts Delete calls; DeleteRequested counts the flows
	// passed to them.
	DeleteCalls, DeleteRequested int
	// ListErr / DeleteErr, when set, are returned by the next calls
	// (Delete still deletes, as the real one tries every flow).
	ListErr, DeleteErr error
}

// ListCall is one recorded List call.
type ListCall struct {
	Family model.Family
	Filter conntrack.Filter
}

type flowKey struct {
	family model.Family
	proto  uint8
	orig   conntrack.Tuple
	zone   uint16
}

type sub struct {
	family model.Family
	types  []conntrack.EventType
	ch     chan conntrack.Event
}

var (
	_ conntrack.Interface = (*Fake)(nil)
	_ conntrack.Watcher   = (*Fake)(nil)
)

// NewFake returns an empty table.
func NewFake() *Fake {
	return &Fake{flows: map[flowKey]conntrack.Flow{}, subs: map[*sub]struct{}{}}
}

func keyOf(fl *conntrack.Flow) flowKey {
	return flowKey{fl.Family, fl.Protocol, fl.Orig, fl.Zone}
}

// Add inserts flows (replacing any with the same tuple), giving each an
// id if it has none, and emits NEW events. It returns the stored flows.
func (f *Fake) Add(flows ...conntrack.Flow) []conntrack.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]conntrack.Flow, 0, len(flows))
	for _, fl := range flows {
		if fl.ID == 0 {
			f.nextID++
			fl.ID = f.nextID
		}
		f.flows[keyOf(&fl)] = fl
		out = append(out, fl)
		f.emit(conntrack.Event{Type: conntrack.EventNew, Flow: fl})
	}
	return out
}

// Flows returns every flow in the table, sorted for stable comparisons.
func (f *Fake) Flows() []conntrack.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]conntrack.Flow, 0, len(f.flows))
	for _, fl := range f.flows {
		out = append(out, fl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Has reports whether a flow with fl's tuple is in the table.
func (f *Fake) Has(fl conntrack.Flow) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.flows[keyOf(&fl)]
	return ok
}

// List implements conntrack.Interface.
func (f *Fake) List(family model.Family, filter conntrack.Filter) ([]conntrack.Flow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ListCalls = append(f.ListCalls, ListCall{family, filter})
	if f.ListErr != nil {
		return nil, f.ListErr
	}
	if family != model.IPv4 && family != model.IPv6 {
		return nil, fmt.Errorf("invalid IP family %v", family)
	}
	if err := filter.Validate(family); err != nil {
		return nil, err
	}
	var out []conntrack.Flow
	for _, fl := range f.flows {
		if fl.Family == family && filter.Match(&fl) {
			out = append(out, fl)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Delete implements conntrack.Interface.
func (f *Fake) Delete(flows []conntrack.Flow) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.DeleteCalls++
	f.DeleteRequested += len(flows)
	n := 0
	for i := range flows {
		k := keyOf(&flows[i])
		cur, ok := f.flows[k]
		if !ok || (flows[i].ID != 0 && cur.ID != flows[i].ID) {
			continue // ENOENT in the kernel: not an error
		}
		delete(f.flows, k)
		n++
		f.emit(conntrack.Event{Type: conntrack.EventDestroy, Flow: cur})
	}
	return n, f.DeleteErr
}

// Watch implements conntrack.Watcher: events from Add and Delete are sent
// until ctx is done.
func (f *Fake) Watch(ctx context.Context, family model.Family, types []conntrack.EventType, out chan<- conntrack.Event) error {
	s := &sub{family: family, types: types, ch: make(chan conntrack.Event, 1024)}
	f.mu.Lock()
	f.subs[s] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, s)
		f.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-s.ch:
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// Watchers is how many Watch calls are active (lets a test wait until its
// watcher is subscribed before generating events).
func (f *Fake) Watchers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// emit must be called with f.mu held. Like the kernel, it drops events for
// a subscriber that does not keep up (the real Watch then fails with
// ENOBUFS; the fake just drops).
func (f *Fake) emit(ev conntrack.Event) {
	for s := range f.subs {
		if !conntrack.WantEvent(s.family, s.types, &ev) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
		}
	}
}

// FakeSysctl is an in-memory Sysctl. Names absent from Values fail with
// fs.ErrNotExist (like a missing /proc/sys file); names in ReadOnly fail
// writes with fs.ErrPermission (like nf_conntrack_max outside the initial
// network namespace).
type FakeSysctl struct {
	Values   map[string]int
	ReadOnly map[string]bool
	// HashsizeValue is the module parameter; HashsizeErr fails its
	// access when set.
	HashsizeValue int
	HashsizeErr   error
	CPUs          int
	// Writes records every successful write as "name=value" in order
	// ("hashsize=N" for the module parameter).
	Writes []string
}

var _ conntrack.Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctl returns a fake with the given values and CPU count.
func NewFakeSysctl(cpus int, values map[string]int) *FakeSysctl {
	if values == nil {
		values = map[string]int{}
	}
	return &FakeSysctl{Values: values, ReadOnly: map[string]bool{}, CPUs: cpus}
}

// Get implements conntrack.Sysctl.
func (s *FakeSysctl) Get(name string) (int, error) {
	v, ok := s.Values[name]
	if !ok {
		return 0, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return v, nil
}

// Set implements conntrack.Sysctl.
func (s *FakeSysctl) Set(name string, v int) error {
	if _, ok := s.Values[name]; !ok {
		return &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	if s.ReadOnly[name] {
		return &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
	}
	s.Values[name] = v
	s.Writes = append(s.Writes, fmt.Sprintf("%s=%d", name, v))
	return nil
}

// Writable implements conntrack.Sysctl.
func (s *FakeSysctl) Writable(name string) bool {
	_, ok := s.Values[name]
	return ok && !s.ReadOnly[name]
}

// Hashsize implements conntrack.Sysctl.
func (s *FakeSysctl) Hashsize() (int, error) {
	if s.HashsizeErr != nil {
		return 0, s.HashsizeErr
	}
	return s.HashsizeValue, nil
}

// SetHashsize implements conntrack.Sysctl.
func (s *FakeSysctl) SetHashsize(v int) error {
	if s.HashsizeErr != nil {
		return s.HashsizeErr
	}
	s.HashsizeValue = v
	s.Writes = append(s.Writes, fmt.Sprintf("hashsize=%d", v))
	return nil
}

// NumCPU implements conntrack.Sysctl.
func (s *FakeSysctl) NumCPU() int { return s.CPUs }
