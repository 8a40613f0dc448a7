package ipvstest

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// FakeLinks is a stateful fake of kernel.Links: named links holding
// addresses. Node addresses are simply addresses on other links. It is safe
// for concurrent use.
type FakeLinks struct {
	mu    sync.Mutex
	links map[string]map[netip.Addr]bool
	calls map[string]int
	fail  map[string]error // "op" or "op addr"
}

var _ kernel.Links = (*FakeLinks)(nil)

// NewFakeLinks returns a node with only a loopback link.
func NewFakeLinks() *FakeLinks {
	f := &FakeLinks{links: map[string]map[netip.Addr]bool{}, calls: map[string]int{}, fail: map[string]error{}}
	f.links["lo"] = map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true, netip.MustParseAddr("::1"): true}
	return f
}

// SetLink creates (or replaces) a link with the given addresses, bypassing
// counters (for arranging node addresses or an initial state).
func (f *FakeLinks) SetLink(name string, addrs ...netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[netip.Addr]bool{}
	for _, a := range addrs {
		m[a] = true
	}
	f.links[name] = m
}

// RemoveLink deletes a link behind the proxier's back.
func (f *FakeLinks) RemoveLink(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
}

// FailOn makes op ("EnsureLink", "AddAddr", "DelAddr", "Addrs",
// "NodeAddrs") fail with err, for one address if addr is valid; nil err
// clears it.
func (f *FakeLinks) FailOn(op string, addr netip.Addr, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := op
	if addr.IsValid() {
		k += " " + addr.String()
	}
	if err == nil {
		delete(f.fail, k)
	} else {
		f.fail[k] = err
	}
}

func (f *FakeLinks) failure(op string, a netip.Addr) error {
	if a.IsValid() {
		if err, ok := f.fail[op+" "+a.String()]; ok {
			return err
		}
	}
	return f.fail[op]
}

// Mutations counts the successful changes since the last ResetCalls.
func (f *FakeLinks) Mutations() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.calls {
		n += v
	}
	return n
}

// ResetCalls zeroes the counters.
func (f *FakeLinks) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = map[string]int{}
}

func (f *FakeLinks) EnsureLink(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("EnsureLink", netip.Addr{}); err != nil {
		return false, err
	}
	if _, ok := f.links[name]; ok {
		return true, nil
	}
	f.links[name] = map[netip.Addr]bool{}
	f.calls["EnsureLink"]++
	return false, nil
}

func (f *FakeLinks) LinkExists(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.links[name]
	return ok, nil
}

func (f *FakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; ok {
		delete(f.links, name)
		f.calls["DeleteLink"]++
	}
	return nil
}

func sorted(m map[netip.Addr]bool, fam model.Family) []netip.Addr {
	out := []netip.Addr{}
	for a := range m {
		if fam.Contains(a) {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

func (f *FakeLinks) Addrs(name string, fam model.Family) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Addrs", netip.Addr{}); err != nil {
		return nil, err
	}
	l, ok := f.links[name]
	if !ok {
		return nil, fmt.Errorf("link %s not found", name)
	}
	return sorted(l, fam), nil
}

func (f *FakeLinks) AddAddr(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("AddAddr", a); err != nil {
		return err
	}
	l, ok := f.links[name]
	if !ok {
		return fmt.Errorf("link %s not found", name)
	}
	if !l[a] {
		l[a] = true
		f.calls["AddAddr"]++
	}
	return nil
}

func (f *FakeLinks) DelAddr(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("DelAddr", a); err != nil {
		return err
	}
	l, ok := f.links[name]
	if !ok {
		return nil
	}
	if l[a] {
		delete(l, a)
		f.calls["DelAddr"]++
	}
	return nil
}

func (f *FakeLinks) NodeAddrs(fam model.Family, except string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("NodeAddrs", netip.Addr{}); err != nil {
		return nil, err
	}
	all := map[netip.Addr]bool{}
	for name, l := range f.links {
		if name == except {
			continue
		}
		for a := range l {
			if kernel.UsableNodeAddr(fam, a) {
				all[a] = true
			}
		}
	}
	return sorted(all, fam), nil
}

// Dump lists the links and their addresses, sorted.
func (f *FakeLinks) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.links))
	for n := range f.links {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s:", n)
		for _, fam := range []model.Family{model.IPv4, model.IPv6} {
			for _, a := range sorted(f.links[n], fam) {
				fmt.Fprintf(&b, " %s", a)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// FakeSysctl is a map-backed kernel.Sysctl; a name can be made to fail.
type FakeSysctl struct {
	mu     sync.Mutex
	Values map[string]string
	Fail   map[string]error
	sets   int
}

var _ kernel.Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctl returns an empty FakeSysctl.
func NewFakeSysctl() *FakeSysctl {
	return &FakeSysctl{Values: map[string]string{}, Fail: map[string]error{}}
}

func (f *FakeSysctl) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.Fail[name]; err != nil {
		return "", err
	}
	v, ok := f.Values[name]
	if !ok {
		return "", fmt.Errorf("sysctl %s: no such file or directory", name)
	}
	return v, nil
}

func (f *FakeSysctl) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.Fail[name]; err != nil {
		return err
	}
	f.Values[name] = value
	f.sets++
	return nil
}

// Value returns a sysctl's value ("" if unset).
func (f *FakeSysctl) Value(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Values[name]
}

// Sets counts the Set calls.
func (f *FakeSysctl) Sets() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sets
}
