package ipvstest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/model"
)

// FakeIPSet is a stateful fake of ipset.Interface. Restore interprets the
// commands kpr uses (create, add, del, flush, destroy) with `-exist`
// semantics, like the real tool (checked against it by the kernel test in
// package ipset):
//
//   - create of an existing set succeeds only if type, family and maxelem
//     match;
//   - add of a present entry and del of an absent one succeed;
//   - add/del/flush on a missing set, a malformed entry, an address of the
//     wrong family and a /0 network fail;
//   - destroy of a missing set succeeds; of one InUse reports as
//     referenced, it fails;
//   - processing stops at the first failing line and the error is an
//     *ipset.RestoreError naming the line; earlier lines stay applied,
//     except add/del lines still buffered by the tool (see Restore).
//
// It is safe for concurrent use.
type FakeIPSet struct {
	mu       sync.Mutex
	sets     map[string]*ipset.Set
	restores int
	lines    int
	failures []error
	// InUse, if set, reports whether a set is referenced (by iptables
	// rules), which makes destroy fail as in the kernel.
	InUse func(name string) bool
}

var _ ipset.Interface = (*FakeIPSet)(nil)

// NewFakeIPSet returns a namespace without sets.
func NewFakeIPSet() *FakeIPSet { return &FakeIPSet{sets: map[string]*ipset.Set{}} }

// FailNextRestores makes the next n Restore calls fail without changing
// anything.
func (f *FakeIPSet) FailNextRestores(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		err = &ipset.RestoreError{Stderr: "ipset restore: injected failure"}
	}
	for range n {
		f.failures = append(f.failures, err)
	}
}

// Restores counts successful Restore calls; Lines the commands they ran.
func (f *FakeIPSet) Restores() (calls, lines int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restores, f.lines
}

// ResetCalls zeroes the counters.
func (f *FakeIPSet) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores, f.lines = 0, 0
}

// Set returns a copy of a set (nil if absent).
func (f *FakeIPSet) Set(name string) *ipset.Set {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return nil
	}
	return copySet(s)
}

// Names lists the sets, sorted.
func (f *FakeIPSet) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.sets))
	for n := range f.sets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func copySet(s *ipset.Set) *ipset.Set {
	c := *s
	c.Entries = make(map[string]struct{}, len(s.Entries))
	for e := range s.Entries {
		c.Entries[e] = struct{}{}
	}
	return &c
}

func (f *FakeIPSet) Save(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.sets))
	for n := range f.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	sets := make([]*ipset.Set, 0, len(names))
	for _, n := range names {
		sets = append(sets, f.sets[n])
	}
	return ipset.Save(sets), nil
}

func (f *FakeIPSet) Restore(ctx context.Context, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failures) > 0 {
		err := f.failures[0]
		f.failures = f.failures[1:]
		return err
	}
	// The real tool buffers consecutive add/del lines and sends them when
	// the next line's element has been parsed for another set, when
	// another command comes, or at the end. A failing line therefore also
	// loses the buffered lines before it (checked by the kernel test).
	var pending []entryOp
	flush := func() {
		for _, op := range pending {
			s := f.sets[op.set]
			if op.add {
				if s.Type == ipset.BitmapPort || s.MaxElem == 0 || len(s.Entries) < s.MaxElem || s.Has(op.entry) {
					s.Add(op.entry)
				}
			} else {
				delete(s.Entries, op.entry)
			}
		}
		pending = pending[:0]
	}
	lines := strings.Split(string(data), "\n")
	n := 0
	for i, line := range lines {
		w := strings.Fields(line)
		if len(w) == 0 || strings.HasPrefix(w[0], "#") || w[0] == "COMMIT" {
			continue
		}
		n++
		fail := func(err error) error {
			return &ipset.RestoreError{Line: i + 1, Stderr: fmt.Sprintf("ipset v7.17: Error in line %d: %v", i+1, err)}
		}
		switch w[0] {
		case "add", "-A", "del", "-D":
			op, err := f.parseEntryOp(w)
			if err != nil {
				return fail(err)
			}
			if len(pending) > 0 && pending[0].set != op.set {
				flush()
			}
			pending = append(pending, op)
		default:
			flush()
			if err := f.command(w); err != nil {
				return fail(err)
			}
		}
	}
	flush()
	f.lines += n
	f.restores++
	return nil
}

type entryOp struct {
	set, entry string
	add        bool
}

func (f *FakeIPSet) parseEntryOp(w []string) (entryOp, error) {
	if len(w) < 3 {
		return entryOp{}, fmt.Errorf("syntax error: missing element")
	}
	s, ok := f.sets[w[1]]
	if !ok {
		return entryOp{}, fmt.Errorf("The set with the given name does not exist")
	}
	fam := s.Family
	if s.Type == ipset.BitmapPort {
		fam = model.IPv4
	}
	e, err := ipset.ParseEntry(s.Type, fam, w[2])
	if err != nil {
		return entryOp{}, fmt.Errorf("Syntax error: %v", err)
	}
	return entryOp{set: w[1], entry: e, add: w[0] == "add" || w[0] == "-A"}, nil
}

// command runs a create, flush or destroy line.
func (f *FakeIPSet) command(w []string) error {
	if len(w) < 2 {
		return fmt.Errorf("syntax error: %q", strings.Join(w, " "))
	}
	name := w[1]
	s, exists := f.sets[name]
	switch w[0] {
	case "create", "-N":
		if len(w) < 3 {
			return fmt.Errorf("syntax error: missing set type")
		}
		if len(name) > ipset.MaxNameLen {
			return fmt.Errorf("setname '%s' is longer than %d characters", name, ipset.MaxNameLen)
		}
		parsed, err := ipset.Parse([]byte(strings.Join(w, " ")), nil)
		if err != nil {
			return err
		}
		ns := parsed[name]
		switch ns.Type {
		case ipset.HashIP, ipset.HashIPPort, ipset.HashIPPortIP, ipset.HashIPPortNet, ipset.BitmapPort:
		default:
			return fmt.Errorf("syntax error: unknown settype: '%s'", ns.Type)
		}
		if ns.Type != ipset.BitmapPort && ns.MaxElem == 0 {
			ns.MaxElem = 65536
		}
		if exists {
			if !s.Compatible(ns) {
				return fmt.Errorf("Set cannot be created: set with the same name already exists")
			}
			return nil
		}
		f.sets[name] = ns
	case "flush", "-F":
		if !exists {
			return fmt.Errorf("The set with the given name does not exist")
		}
		s.Entries = map[string]struct{}{}
	case "destroy", "-X":
		if !exists {
			return nil // -exist
		}
		if f.InUse != nil && f.InUse(name) {
			return fmt.Errorf("Set cannot be destroyed: it is in use by a kernel component")
		}
		delete(f.sets, name)
	default:
		return fmt.Errorf("syntax error: unknown command %q", w[0])
	}
	return nil
}
