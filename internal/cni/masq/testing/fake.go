// Package testing holds a stateful fake of masq.Table.
package testing

import (
	"fmt"
	"strings"
	"sync"

	"github.com/kpr-proxy/kpr/internal/cni/masq"
)

var builtin = map[string]bool{"PREROUTING": true, "INPUT": true, "OUTPUT": true, "POSTROUTING": true, "FORWARD": true}

// FakeTable keeps chains and rules in memory and counts mutations.
type FakeTable struct {
	mu     sync.Mutex
	chains map[string][]string // "table/chain" -> rules (args joined by spaces)
	// Mutations counts calls that changed state.
	Mutations   int
	RandomFully bool
}

var _ masq.Table = (*FakeTable)(nil)

// NewFakeTable returns a table with only the built-in chains.
func NewFakeTable() *FakeTable { return &FakeTable{chains: map[string][]string{}} }

func key(table, chain string) string { return table + "/" + chain }

func (f *FakeTable) exists(table, chain string) bool {
	_, ok := f.chains[key(table, chain)]
	return ok || builtin[chain]
}

// ChainExists implements masq.Table.
func (f *FakeTable) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exists(table, chain), nil
}

// NewChain implements masq.Table.
func (f *FakeTable) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists(table, chain) {
		return fmt.Errorf("chain %s already exists", chain)
	}
	f.chains[key(table, chain)] = nil
	f.Mutations++
	return nil
}

// ClearChain implements masq.Table (creating the chain if missing, like iptables -N/-F).
func (f *FakeTable) ClearChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chains[key(table, chain)] = nil
	f.Mutations++
	return nil
}

// ClearAndDeleteChain implements masq.Table.
func (f *FakeTable) ClearAndDeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.chains, key(table, chain))
	f.Mutations++
	return nil
}

// List implements masq.Table in `iptables -S` format.
func (f *FakeTable) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists(table, chain) {
		return nil, fmt.Errorf("no chain %s", chain)
	}
	out := []string{"-N " + chain}
	if builtin[chain] {
		out[0] = "-P " + chain + " ACCEPT"
	}
	for _, r := range f.chains[key(table, chain)] {
		out = append(out, "-A "+chain+" "+quoteComment(r))
	}
	return out, nil
}

// quoteComment mimics iptables -S quoting comments that contain spaces.
func quoteComment(rule string) string {
	const marker = "--comment "
	i := strings.Index(rule, marker)
	if i < 0 {
		return rule
	}
	rest := rule[i+len(marker):]
	j := strings.Index(rest, " -j ")
	if j < 0 {
		return rule
	}
	return rule[:i+len(marker)] + `"` + rest[:j] + `"` + rest[j:]
}

// Exists implements masq.Table.
func (f *FakeTable) Exists(table, chain string, rulespec ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := strings.Join(rulespec, " ")
	for _, r := range f.chains[key(table, chain)] {
		if r == want {
			return true, nil
		}
	}
	return false, nil
}

// Append implements masq.Table.
func (f *FakeTable) Append(table, chain string, rulespec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists(table, chain) {
		return fmt.Errorf("no chain %s", chain)
	}
	k := key(table, chain)
	f.chains[k] = append(f.chains[k], strings.Join(rulespec, " "))
	f.Mutations++
	return nil
}

// DeleteIfExists implements masq.Table.
func (f *FakeTable) DeleteIfExists(table, chain string, rulespec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(table, chain)
	want := strings.Join(rulespec, " ")
	for i, r := range f.chains[k] {
		if r == want {
			f.chains[k] = append(f.chains[k][:i:i], f.chains[k][i+1:]...)
			f.Mutations++
			return nil
		}
	}
	return nil
}

// HasRandomFully implements masq.Table.
func (f *FakeTable) HasRandomFully() bool { return f.RandomFully }

// Rules returns a chain's rules (test inspection).
func (f *FakeTable) Rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.chains[key(table, chain)]...)
}
