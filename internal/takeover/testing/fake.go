// Package takeovertest has stateful fakes of the takeover's kernel
// boundaries, for unit tests.
package takeovertest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	ipttest "github.com/kpr-proxy/kpr/internal/iptables/ipt/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/takeover"
)

// Tables is takeover.Tables over ipttest.FakeIPTables (the proxy's own
// stateful iptables fake). The fake creates tables on first use, so which
// tables "exist" for SaveAll is kept here: those given to NewTables, plus
// any a Restore or Load touched.
type Tables struct {
	*ipttest.FakeIPTables
	mu     sync.Mutex
	exists []ipt.Table
	saves  int
}

var _ takeover.Tables = (*Tables)(nil)

// NewTables returns an empty fake of family f and backend b in which the
// given tables exist.
func NewTables(f model.Family, b ipt.Backend, tables ...ipt.Table) *Tables {
	fk := ipttest.New(f)
	fk.SetBackend(b)
	return &Tables{FakeIPTables: fk, exists: tables}
}

// Load applies an iptables-restore --noflush batch (e.g. a saved kube-proxy
// rule set) and marks its tables as existing.
func (t *Tables) Load(data []byte) error {
	t.touch(data)
	return t.FakeIPTables.Restore(context.Background(), data)
}

// Restore is the fake's restore, marking the batch's tables as existing.
func (t *Tables) Restore(ctx context.Context, data []byte) error {
	t.touch(data)
	return t.FakeIPTables.Restore(ctx, data)
}

func (t *Tables) touch(data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, line := range strings.Split(string(data), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "*"); ok {
			if tb := ipt.Table(strings.TrimSpace(name)); !slices.Contains(t.exists, tb) {
				t.exists = append(t.exists, tb)
			}
		}
	}
}

// SaveAll concatenates the saves of the existing tables.
func (t *Tables) SaveAll(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	tables := slices.Clone(t.exists)
	t.saves++
	t.mu.Unlock()
	var b strings.Builder
	for _, tb := range tables {
		b.Write(t.Save(tb))
	}
	return []byte(b.String()), nil
}

// SaveAllCalls counts SaveAll calls.
func (t *Tables) SaveAllCalls() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.saves
}

// ---- IPVS ----

// IPVS is a fake IPVS table.
type IPVS struct {
	mu      sync.Mutex
	servers []takeover.VirtualServer
	fail    map[takeover.VirtualServer]error
}

var _ takeover.IPVS = (*IPVS)(nil)

// NewIPVS returns a fake holding servers.
func NewIPVS(servers ...takeover.VirtualServer) *IPVS {
	return &IPVS{servers: servers, fail: map[takeover.VirtualServer]error{}}
}

// FailDelete makes deleting v fail with err.
func (f *IPVS) FailDelete(v takeover.VirtualServer, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[v] = err
}

func (f *IPVS) VirtualServers() ([]takeover.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.servers), nil
}

func (f *IPVS) DeleteVirtualServer(v takeover.VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[v]; err != nil {
		return err
	}
	i := slices.Index(f.servers, v)
	if i < 0 {
		return fmt.Errorf("no such service %s", v)
	}
	f.servers = slices.Delete(f.servers, i, i+1)
	return nil
}

// Servers returns what is left, sorted.
func (f *IPVS) Servers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.servers))
	for i, v := range f.servers {
		out[i] = v.String()
	}
	sort.Strings(out)
	return out
}

// ---- links ----

// Link is a fake link.
type Link struct {
	Kind  string
	Addrs []netip.Addr
}

// Links is a fake set of links.
type Links struct {
	mu    sync.Mutex
	links map[string]Link
}

var _ takeover.Links = (*Links)(nil)

// NewLinks returns a fake with the given links.
func NewLinks(links map[string]Link) *Links {
	m := map[string]Link{}
	for k, v := range links {
		m[k] = v
	}
	return &Links{links: m}
}

func (f *Links) Link(name string) (string, []netip.Addr, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	return l.Kind, slices.Clone(l.Addrs), ok, nil
}

func (f *Links) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	return nil
}

// Names returns the links left, sorted.
func (f *Links) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.links {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- ipsets ----

// IPSets is a fake ipset table. A set named in InUse cannot be destroyed
// (the kernel refuses sets that iptables rules still refer to).
type IPSets struct {
	mu    sync.Mutex
	sets  map[string][]string
	inUse map[string]bool
}

var _ takeover.IPSets = (*IPSets)(nil)

// NewIPSets returns a fake with the given sets and members.
func NewIPSets(sets map[string][]string) *IPSets {
	m := map[string][]string{}
	for k, v := range sets {
		m[k] = slices.Clone(v)
	}
	return &IPSets{sets: m, inUse: map[string]bool{}}
}

// SetInUse marks a set as referenced (destroy fails) or not.
func (f *IPSets) SetInUse(name string, inUse bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inUse[name] = inUse
}

func (f *IPSets) List(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.sets {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func (f *IPSets) Members(ctx context.Context, name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.sets[name]
	if !ok {
		return nil, fmt.Errorf("ipset v7: The set with the given name does not exist: %s", name)
	}
	return slices.Clone(m), nil
}

func (f *IPSets) Destroy(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sets[name]; !ok {
		return fmt.Errorf("ipset v7: The set with the given name does not exist: %s", name)
	}
	if f.inUse[name] {
		return fmt.Errorf("ipset v7: Set cannot be destroyed: it is in use by a kernel component: %s", name)
	}
	delete(f.sets, name)
	return nil
}

// Names returns the sets left, sorted.
func (f *IPSets) Names() []string {
	out, _ := f.List(context.Background())
	return out
}

// ---- nftables ----

// NFTables is a fake nftables ruleset (tables only).
type NFTables struct {
	mu     sync.Mutex
	tables []takeover.NFTable
}

var _ takeover.NFTables = (*NFTables)(nil)

// NewNFTables returns a fake with the given tables.
func NewNFTables(tables ...takeover.NFTable) *NFTables {
	return &NFTables{tables: tables}
}

// Add adds a table (e.g. kube-proxy putting its table back).
func (f *NFTables) Add(t takeover.NFTable) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tables = append(f.tables, t)
}

func (f *NFTables) Tables(ctx context.Context) ([]takeover.NFTable, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tables), nil
}

func (f *NFTables) DeleteTable(ctx context.Context, t takeover.NFTable) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.tables, t)
	if i < 0 {
		return fmt.Errorf("Error: No such file or directory; delete table %s", t)
	}
	f.tables = slices.Delete(f.tables, i, i+1)
	return nil
}
