// Package ipvstest provides stateful fakes of the IPVS mode's kernel
// boundaries for unit tests: FakeIPVS (kernel.Handle), FakeLinks
// (kernel.Links), FakeSysctl (kernel.Sysctl) and FakeIPSet
// (ipset.Interface). Each keeps state like the kernel does, answers with the
// kernel's errors, counts mutating calls (so a test can assert that a sync
// changed nothing) and can be told to fail.
package ipvstest

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Schedulers are the IPVS schedulers of the Linux kernel.
var Schedulers = map[string]bool{
	"rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true, "dh": true,
	"sh": true, "sed": true, "nq": true, "fo": true, "ovf": true, "mh": true, "twos": true,
}

type fakeService struct {
	svc   kernel.Service
	dests map[netip.AddrPort]*kernel.Destination
}

// FakeIPVS is a stateful fake of kernel.Handle. It is safe for concurrent
// use.
type FakeIPVS struct {
	mu       sync.Mutex
	services map[kernel.Key]*fakeService
	fwmark   []*kernel.Service
	timeouts kernel.Timeouts
	calls    map[string]int
	fail     map[string]error // "op key" or "op" -> error
}

var _ kernel.Handle = (*FakeIPVS)(nil)

// NewFakeIPVS returns an empty IPVS table.
func NewFakeIPVS() *FakeIPVS {
	return &FakeIPVS{services: map[kernel.Key]*fakeService{}, calls: map[string]int{}, fail: map[string]error{}}
}

// FailOn makes op ("NewService", "UpdateService", "DelService",
// "GetServices", "GetDestinations", "NewDestination", "UpdateDestination",
// "DelDestination", "SetTimeouts") fail with err for the virtual server key
// (or for every key when key is nil) until cleared with a nil err.
func (f *FakeIPVS) FailOn(op string, key *kernel.Key, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := op
	if key != nil {
		k = op + " " + key.String()
	}
	if err == nil {
		delete(f.fail, k)
	} else {
		f.fail[k] = err
	}
}

func (f *FakeIPVS) failure(op string, key kernel.Key) error {
	if err, ok := f.fail[op+" "+key.String()]; ok {
		return err
	}
	return f.fail[op]
}

// Calls returns how many times each mutating operation succeeded since the
// last ResetCalls.
func (f *FakeIPVS) Calls() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.calls {
		out[k] = v
	}
	return out
}

// Mutations is the total of Calls.
func (f *FakeIPVS) Mutations() int {
	n := 0
	for _, v := range f.Calls() {
		n += v
	}
	return n
}

// ResetCalls zeroes the counters.
func (f *FakeIPVS) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = map[string]int{}
}

func validService(s *kernel.Service) error {
	if s.FWMark != 0 {
		return nil
	}
	switch s.Protocol {
	case model.TCP, model.UDP, model.SCTP:
	default:
		return fmt.Errorf("protocol %q: %w", s.Protocol, syscall.EINVAL)
	}
	if !s.Addr.IsValid() || !s.Family.Contains(s.Addr) {
		return fmt.Errorf("address %s not of family %s: %w", s.Addr, s.Family, syscall.EINVAL)
	}
	if !Schedulers[s.Scheduler] {
		// The kernel answers ENOENT when no scheduler module has the name.
		return fmt.Errorf("scheduler %q: %w", s.Scheduler, syscall.ENOENT)
	}
	return nil
}

func (f *FakeIPVS) GetServices() ([]*kernel.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail["GetServices"]; err != nil {
		return nil, err
	}
	out := make([]*kernel.Service, 0, len(f.services)+len(f.fwmark))
	for _, s := range f.services {
		c := s.svc
		// The kernel reports every listed service as hashed.
		c.Flags |= kernel.FlagHashed
		out = append(out, &c)
	}
	for _, s := range f.fwmark {
		c := *s
		out = append(out, &c)
	}
	return out, nil
}

// AddService puts a virtual server straight into the table, bypassing
// failures and counters (for arranging an initial state). FWMark services
// are kept apart and never touched by the other methods.
func (f *FakeIPVS) AddService(s kernel.Service, dests ...kernel.Destination) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.FWMark != 0 {
		f.fwmark = append(f.fwmark, &s)
		return
	}
	fs := &fakeService{svc: s, dests: map[netip.AddrPort]*kernel.Destination{}}
	for _, d := range dests {
		d := d
		fs.dests[d.AddrPort()] = &d
	}
	f.services[s.Key()] = fs
}

func (f *FakeIPVS) NewService(s *kernel.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("NewService", s.Key()); err != nil {
		return err
	}
	if err := validService(s); err != nil {
		return err
	}
	if _, ok := f.services[s.Key()]; ok {
		return syscall.EEXIST
	}
	c := *s
	c.Flags &^= kernel.FlagHashed
	f.services[s.Key()] = &fakeService{svc: c, dests: map[netip.AddrPort]*kernel.Destination{}}
	f.calls["NewService"]++
	return nil
}

func (f *FakeIPVS) UpdateService(s *kernel.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("UpdateService", s.Key()); err != nil {
		return err
	}
	if err := validService(s); err != nil {
		return err
	}
	fs, ok := f.services[s.Key()]
	if !ok {
		return syscall.ESRCH
	}
	fs.svc.Scheduler, fs.svc.Flags, fs.svc.Timeout = s.Scheduler, s.Flags&^kernel.FlagHashed, s.Timeout
	f.calls["UpdateService"]++
	return nil
}

func (f *FakeIPVS) DelService(s *kernel.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("DelService", s.Key()); err != nil {
		return err
	}
	if _, ok := f.services[s.Key()]; !ok {
		return syscall.ESRCH
	}
	delete(f.services, s.Key())
	f.calls["DelService"]++
	return nil
}

func (f *FakeIPVS) GetDestinations(s *kernel.Service) ([]*kernel.Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("GetDestinations", s.Key()); err != nil {
		return nil, err
	}
	fs, ok := f.services[s.Key()]
	if !ok {
		return nil, syscall.ESRCH
	}
	out := make([]*kernel.Destination, 0, len(fs.dests))
	for _, d := range fs.dests {
		c := *d
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AddrPort().Compare(out[j].AddrPort()) < 0 })
	return out, nil
}

func (f *FakeIPVS) destOp(op string, s *kernel.Service, d *kernel.Destination) (*fakeService, error) {
	if err := f.failure(op, s.Key()); err != nil {
		return nil, err
	}
	fs, ok := f.services[s.Key()]
	if !ok {
		return nil, syscall.ESRCH
	}
	if d.Addr.Is4() != fs.svc.Addr.Is4() {
		// Mixed families only work with tunnelling, never with NAT.
		return nil, syscall.EAFNOSUPPORT
	}
	if d.Weight < 0 {
		return nil, syscall.EINVAL
	}
	return fs, nil
}

func (f *FakeIPVS) NewDestination(s *kernel.Service, d *kernel.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, err := f.destOp("NewDestination", s, d)
	if err != nil {
		return err
	}
	if _, ok := fs.dests[d.AddrPort()]; ok {
		return syscall.EEXIST
	}
	fs.dests[d.AddrPort()] = &kernel.Destination{Addr: d.Addr, Port: d.Port, Weight: d.Weight}
	f.calls["NewDestination"]++
	return nil
}

func (f *FakeIPVS) UpdateDestination(s *kernel.Service, d *kernel.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, err := f.destOp("UpdateDestination", s, d)
	if err != nil {
		return err
	}
	cur, ok := fs.dests[d.AddrPort()]
	if !ok {
		return syscall.ENOENT
	}
	cur.Weight = d.Weight
	f.calls["UpdateDestination"]++
	return nil
}

func (f *FakeIPVS) DelDestination(s *kernel.Service, d *kernel.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, err := f.destOp("DelDestination", s, d)
	if err != nil {
		return err
	}
	if _, ok := fs.dests[d.AddrPort()]; !ok {
		return syscall.ENOENT
	}
	delete(fs.dests, d.AddrPort())
	f.calls["DelDestination"]++
	return nil
}

// SetConns sets a real server's connection counters (as traffic would).
func (f *FakeIPVS) SetConns(key kernel.Key, dest netip.AddrPort, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, ok := f.services[key]
	if !ok {
		return fmt.Errorf("no virtual server %s", key)
	}
	d, ok := fs.dests[dest]
	if !ok {
		return fmt.Errorf("no real server %s in %s", dest, key)
	}
	d.ActiveConns, d.InactiveConns = active, inactive
	return nil
}

// Dest returns a real server (nil if absent).
func (f *FakeIPVS) Dest(key kernel.Key, dest netip.AddrPort) *kernel.Destination {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, ok := f.services[key]
	if !ok {
		return nil
	}
	d, ok := fs.dests[dest]
	if !ok {
		return nil
	}
	c := *d
	return &c
}

// Service returns a virtual server (nil if absent).
func (f *FakeIPVS) Service(key kernel.Key) *kernel.Service {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, ok := f.services[key]
	if !ok {
		return nil
	}
	c := fs.svc
	return &c
}

func (f *FakeIPVS) GetTimeouts() (kernel.Timeouts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeouts, nil
}

func (f *FakeIPVS) SetTimeouts(t kernel.Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail["SetTimeouts"]; err != nil {
		return err
	}
	// Zero keeps the current value, as in the kernel.
	if t.TCP != 0 {
		f.timeouts.TCP = t.TCP
	}
	if t.TCPFin != 0 {
		f.timeouts.TCPFin = t.TCPFin
	}
	if t.UDP != 0 {
		f.timeouts.UDP = t.UDP
	}
	f.calls["SetTimeouts"]++
	return nil
}

// Dump lists the table like `ipvsadm -Ln` does, sorted: one line per
// virtual server, one per real server with its weight.
func (f *FakeIPVS) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]kernel.Key, 0, len(f.services))
	for k := range f.services {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	var b strings.Builder
	for _, k := range keys {
		fs := f.services[k]
		fmt.Fprintf(&b, "%s\n", fs.svc.String())
		ds := make([]netip.AddrPort, 0, len(fs.dests))
		for a := range fs.dests {
			ds = append(ds, a)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i].Compare(ds[j]) < 0 })
		for _, a := range ds {
			fmt.Fprintf(&b, "  -> %s weight %d\n", a, fs.dests[a].Weight)
		}
	}
	for _, s := range f.fwmark {
		fmt.Fprintf(&b, "%s\n", s.String())
	}
	return b.String()
}
