// Package ipttest provides FakeIPTables, a stateful in-memory implementation
// of ipt.Interface for unit tests of the sync loop.
//
// The fake keeps tables → chains → rules and implements iptables-restore
// --noflush with the semantics of iptables 1.8 (checked against the real
// legacy and nft backends by the cross-check test in package ipt):
//
//   - `*table` opens a table; each table is committed at its COMMIT line.
//     When a batch fails, tables committed earlier in the same batch stay
//     applied and the failing table is unchanged; later tables are not
//     processed. Input ending without COMMIT fails ("COMMIT expected").
//   - `:CHAIN - [0:0]` creates a user chain or flushes an existing one.
//     Declaring a built-in chain only sets its policy ("-" keeps it); its
//     rules are kept, as with the real --noflush.
//   - Commands -A, -I [n], -R n, -D (spec or number), -F [chain],
//     -X [chain], -N, -P and -Z. -A/-I to a missing chain fails; -X fails for
//     a missing, built-in, non-empty or still-referenced chain.
//   - A -j/-g target must be an existing user chain of the table or a known
//     extension target (ipt.IsExtensionTarget) valid in that table
//     (DNAT/SNAT/MASQUERADE only in nat, REJECT only in filter, ...).
//   - Chain names longer than 28 characters are rejected.
//
// Known differences from the real tools, all deliberate:
//
//   - Errors always blame the offending line. The real legacy backend blames
//     the COMMIT line for errors the kernel finds (a target in the wrong
//     table), and nft blames COMMIT for jumps to missing chains.
//   - The fake is as strict as the legacy backend: a policy on a user chain
//     (`:X ACCEPT`) and jumps to chains declared later in the batch fail, as
//     they do there (nft accepts them).
//   - RestoreTest checks everything Restore checks (real --test checks less).
//   - With SetBackend(ipt.BackendNFT) the fake rejects `-R n` of a rule added
//     earlier in the same batch: iptables-nft-restore 1.8.9 segfaults or
//     silently drops rules on it. nft 1.8.9 also sometimes fails `-I n` at a
//     rule added in the same batch (RULE_INSERT ... No such file or
//     directory), depending on the table's prior contents; the fake does not
//     model that. Renderers should not emit positional commands (-I n, -R,
//     -D n) at all.
//   - Rules are compared as text, after tokenizing and re-quoting the way
//     iptables-save prints them; the real tools compare parsed rules, so
//     `-d 192.0.2.1` equals `-d 192.0.2.1/32` there but not here. Write rules
//     in iptables-save's canonical form (which the proxy does anyway, so that
//     saved state can be compared with what was rendered).
//   - Packet counters are ignored.
package ipttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
)

// RestoreCall is one recorded Restore or RestoreTest call.
type RestoreCall struct {
	Data []byte
	Test bool
	Err  error // what the call returned
}

// FakeIPTables is a stateful fake of ipt.Interface. It is safe for
// concurrent use (the real Runner is not, but tests often inspect the fake
// from another goroutine).
type FakeIPTables struct {
	mu          sync.Mutex
	family      model.Family
	backend     ipt.Backend
	randomFully bool
	tables      map[ipt.Table]*table
	restores    []RestoreCall
	failures    []error // injected errors for the next Restore calls
}

var _ ipt.Interface = (*FakeIPTables)(nil)

// New returns an empty fake (built-in chains only, policy ACCEPT) for family,
// with backend legacy and --random-fully support.
func New(family model.Family) *FakeIPTables {
	return &FakeIPTables{
		family:      family,
		backend:     ipt.BackendLegacy,
		randomFully: true,
		tables:      map[ipt.Table]*table{},
	}
}

// SetBackend sets what Backend reports.
func (f *FakeIPTables) SetBackend(b ipt.Backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backend = b
}

// SetHasRandomFully sets what HasRandomFully reports.
func (f *FakeIPTables) SetHasRandomFully(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.randomFully = v
}

// FailNextRestores makes the next n Restore calls (not RestoreTest) fail with
// err without changing anything; a nil err means a *ipt.RestoreError with
// Line 0. The calls are still recorded.
func (f *FakeIPTables) FailNextRestores(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		err = &ipt.RestoreError{Stderr: "iptables-restore: injected failure"}
	}
	for range n {
		f.failures = append(f.failures, err)
	}
}

// Restores returns the recorded Restore/RestoreTest calls, oldest first.
func (f *FakeIPTables) Restores() []RestoreCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]RestoreCall, len(f.restores))
	for i, c := range f.restores {
		out[i] = RestoreCall{Data: slices.Clone(c.Data), Test: c.Test, Err: c.Err}
	}
	return out
}

// ResetRestores forgets the recorded calls.
func (f *FakeIPTables) ResetRestores() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = nil
}

// Save returns the table in iptables-save format, without the comment lines
// and with zero counters: built-in chains in kernel order, then user chains
// sorted by name; rules grouped by chain in the same order.
func (f *FakeIPTables) Save(t ipt.Table) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return nil
	}
	return tb.save(t)
}

// Rules returns the rules of a chain as iptables-save prints them (without
// "-A CHAIN"), and whether the chain exists.
func (f *FakeIPTables) Rules(t ipt.Table, chain string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return nil, false
	}
	c := tb.chains[chain]
	if c == nil {
		return nil, false
	}
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i] = r.text
	}
	return out, true
}

// Run applies one iptables command line the way the iptables binary would,
// e.g. Run("-t", "nat", "-F") for an external flush. The table defaults to
// filter. It is atomic: on error nothing changes.
func (f *FakeIPTables) Run(args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	tname := ipt.TableFilter
	var rest []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-t" || args[i] == "--table" {
			if i+1 >= len(args) {
				return errors.New("iptables: option \"-t\" requires an argument")
			}
			tname = ipt.Table(args[i+1])
			i++
			continue
		}
		rest = append(rest, args[i])
	}
	tb, err := f.table(tname)
	if err != nil {
		return err
	}
	work := tb.clone()
	if err := work.command(tname, rest); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	f.tables[tname] = work
	return nil
}

// table returns the live table, creating it with its built-in chains.
func (f *FakeIPTables) table(t ipt.Table) (*table, error) {
	if tb := f.tables[t]; tb != nil {
		return tb, nil
	}
	builtins, ok := builtinChains[t]
	if !ok {
		return nil, fmt.Errorf("table '%s' does not exist", t)
	}
	tb := &table{chains: map[string]*chain{}}
	for _, name := range builtins {
		tb.chains[name] = &chain{name: name, builtin: true, policy: "ACCEPT"}
	}
	f.tables[t] = tb
	return tb, nil
}

func (f *FakeIPTables) Family() model.Family { return f.family }

func (f *FakeIPTables) Backend() ipt.Backend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backend
}

func (f *FakeIPTables) HasRandomFully() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.randomFully
}

func (f *FakeIPTables) Restore(ctx context.Context, data []byte) error {
	return f.restore(ctx, data, false)
}

func (f *FakeIPTables) RestoreTest(ctx context.Context, data []byte) error {
	return f.restore(ctx, data, true)
}

func (f *FakeIPTables) restore(ctx context.Context, data []byte, test bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	switch {
	case ctx.Err() != nil:
		err = &ipt.RestoreError{Stderr: "iptables-restore: not run", Err: ctx.Err()}
	case !test && len(f.failures) > 0:
		err = f.failures[0]
		f.failures = f.failures[1:]
	default:
		err = f.applyRestore(data, test)
	}
	f.restores = append(f.restores, RestoreCall{Data: slices.Clone(data), Test: test, Err: err})
	return err
}

func (f *FakeIPTables) SaveTable(ctx context.Context, t ipt.Table) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return nil, err
	}
	return tb.save(t), nil
}

func (f *FakeIPTables) ListChains(ctx context.Context, t ipt.Table) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return nil, err
	}
	return tb.orderedNames(t), nil
}

func (f *FakeIPTables) ChainExists(t ipt.Table, name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return false, err
	}
	return tb.chains[name] != nil, nil
}

func (f *FakeIPTables) EnsureChain(t ipt.Table, name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return false, err
	}
	if tb.chains[name] != nil {
		return true, nil
	}
	if err := tb.command(t, []string{"-N", name}); err != nil {
		return false, err
	}
	return false, nil
}

func (f *FakeIPTables) EnsureRule(pos ipt.RulePosition, t ipt.Table, name string, args ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return false, err
	}
	c := tb.chains[name]
	if c == nil {
		return false, fmt.Errorf("%s rule to %s/%s: No chain/target/match by that name", pos, t, name)
	}
	r, err := tb.newRule(t, args)
	if err != nil {
		return false, err
	}
	if c.find(r.text) >= 0 {
		return true, nil
	}
	if pos == ipt.Prepend {
		c.rules = slices.Insert(c.rules, 0, r)
	} else {
		c.rules = append(c.rules, r)
	}
	return false, nil
}

func (f *FakeIPTables) RuleExists(t ipt.Table, name string, args ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return false, err
	}
	// Like `iptables -C`: an unknown target is an error even when the
	// chain is missing; a missing chain is just "no".
	r, err := tb.newRule(t, args)
	if err != nil {
		return false, err
	}
	c := tb.chains[name]
	return c != nil && c.find(r.text) >= 0, nil
}

func (f *FakeIPTables) DeleteRule(t ipt.Table, name string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return err
	}
	c := tb.chains[name]
	if c == nil {
		return nil
	}
	if i := c.find(ruleText(normalizeArgs(args))); i >= 0 {
		c.rules = slices.Delete(c.rules, i, i+1)
	}
	return nil
}

func (f *FakeIPTables) FlushChain(t ipt.Table, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return err
	}
	if c := tb.chains[name]; c != nil {
		c.rules = nil
	}
	return nil
}

func (f *FakeIPTables) DeleteChain(t ipt.Table, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, err := f.table(t)
	if err != nil {
		return err
	}
	if tb.chains[name] == nil {
		return nil
	}
	return tb.command(t, []string{"-X", name})
}

// applyRestore runs an iptables-restore --noflush batch. Lines are 1-based.
func (f *FakeIPTables) applyRestore(data []byte, test bool) error {
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	lines := strings.Split(text, "\n")
	if n := len(lines); n > 0 && lines[n-1] == "" {
		lines = lines[:n-1]
	}
	var (
		work  *table
		tname ipt.Table
	)
	for i, raw := range lines {
		n := i + 1
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		if work == nil {
			if line[0] != '*' {
				return lineError(n, "line %d failed", n)
			}
			tname = ipt.Table(strings.TrimSpace(line[1:]))
			live, err := f.table(tname)
			if err != nil {
				return lineError(n, "iptables-restore: unable to initialize table '%s'\nError occurred at line: %d", tname, n)
			}
			work = live.clone()
			work.inBatch, work.nft = true, f.backend == ipt.BackendNFT
			continue
		}
		switch {
		case line == "COMMIT":
			if !test {
				f.tables[tname] = work.committed()
			}
			work = nil
		case line[0] == '*':
			return lineError(n, "Bad argument `%s'\nError occurred at line: %d", line, n)
		case line[0] == ':':
			if err := work.declare(line[1:]); err != nil {
				return lineError(n, "line %d failed: %v", n, err)
			}
		default:
			if err := work.command(tname, ipt.Tokenize(line)); err != nil {
				return lineError(n, "line %d failed: %v", n, err)
			}
		}
	}
	if work != nil {
		return lineError(len(lines)+1, "COMMIT expected at line %d", len(lines)+1)
	}
	return nil
}

func lineError(line int, format string, args ...any) error {
	return &ipt.RestoreError{Line: line, Stderr: "iptables-restore: " + fmt.Sprintf(format, args...)}
}

// builtinChains per table in kernel (and iptables-save) order.
var builtinChains = map[ipt.Table][]string{
	ipt.TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	ipt.TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	ipt.TableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	ipt.TableRaw:    {"PREROUTING", "OUTPUT"},
	"security":      {"INPUT", "FORWARD", "OUTPUT"},
}

type table struct {
	chains map[string]*chain
	// Set on working copies inside a restore batch.
	inBatch bool
	nft     bool // backend is nft: mirror its batch-only limitations
}

type chain struct {
	name    string
	builtin bool
	policy  string // built-in chains only
	rules   []rule
}

type rule struct {
	text    string // the spec as iptables-save prints it; the rule's identity
	target  string // user chain it jumps to (-j/-g), "" if none
	pending bool   // added by the restore batch in progress
}

func (c *chain) find(text string) int {
	return slices.IndexFunc(c.rules, func(r rule) bool { return r.text == text })
}

// clone copies the table deeply enough that changes to the copy never show
// in the original (rules are immutable values).
func (t *table) clone() *table {
	out := &table{chains: make(map[string]*chain, len(t.chains))}
	for name, c := range t.chains {
		cc := *c
		cc.rules = slices.Clone(c.rules)
		out.chains[name] = &cc
	}
	return out
}

// committed turns a batch's working copy into live state.
func (t *table) committed() *table {
	t.inBatch, t.nft = false, false
	for _, c := range t.chains {
		for i := range c.rules {
			c.rules[i].pending = false
		}
	}
	return t
}

func (t *table) orderedNames(tname ipt.Table) []string {
	names := slices.Clone(builtinChains[tname])
	var user []string
	for name, c := range t.chains {
		if !c.builtin {
			user = append(user, name)
		}
	}
	slices.Sort(user)
	return append(names, user...)
}

func (t *table) save(tname ipt.Table) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", tname)
	names := t.orderedNames(tname)
	for _, name := range names {
		c := t.chains[name]
		policy := "-"
		if c.builtin {
			policy = c.policy
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", name, policy)
	}
	for _, name := range names {
		for _, r := range t.chains[name].rules {
			b.WriteString("-A " + name)
			if r.text != "" {
				b.WriteString(" " + r.text)
			}
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// references counts rules in the table that jump to name.
func (t *table) references(name string) int {
	n := 0
	for _, c := range t.chains {
		for _, r := range c.rules {
			if r.target == name {
				n++
			}
		}
	}
	return n
}

// declare handles ":NAME POLICY [pkts:bytes]".
func (t *table) declare(decl string) error {
	f := strings.Fields(decl)
	if len(f) < 2 {
		return fmt.Errorf("bad chain declaration %q", ":"+decl)
	}
	name, policy := f[0], f[1]
	if c := t.chains[name]; c != nil && c.builtin {
		switch policy {
		case "-":
		case "ACCEPT", "DROP":
			c.policy = policy
		default:
			return fmt.Errorf("Can't set policy `%s' on `%s': Bad policy name", policy, name)
		}
		return nil
	}
	if policy != "-" {
		return fmt.Errorf("Can't set policy `%s' on `%s': Bad built-in chain name", policy, name)
	}
	if c := t.chains[name]; c != nil {
		c.rules = nil // --noflush: declaring a user chain flushes it
		return nil
	}
	if err := validChainName(name); err != nil {
		return err
	}
	t.chains[name] = &chain{name: name}
	return nil
}

func validChainName(name string) error {
	switch {
	case name == "":
		return errors.New("empty chain name")
	case len(name) > 28:
		return fmt.Errorf("Invalid chain name `%s' (28 chars max)", name)
	case name[0] == '-' || name[0] == '!':
		return fmt.Errorf("Invalid chain name `%s'", name)
	case strings.ContainsAny(name, " \t\"'"):
		return fmt.Errorf("Invalid chain name `%s'", name)
	case ipt.IsExtensionTarget(name):
		return fmt.Errorf("chain name `%s' clashes with target name", name)
	}
	return nil
}

// command applies one iptables command (tokens starting with -A, -I, ...) to
// t. On error t may be partly changed only for multi-chain -F/-X, whose
// callers work on clones.
func (t *table) command(tname ipt.Table, toks []string) error {
	// `iptables-save -c` style counters before the command.
	if len(toks) > 0 && strings.HasPrefix(toks[0], "[") && strings.HasSuffix(toks[0], "]") {
		toks = toks[1:]
	}
	if len(toks) == 0 {
		return errors.New("no command")
	}
	cmd, rest := toks[0], toks[1:]
	chainArg := func() (*chain, string, error) {
		if len(rest) == 0 {
			return nil, "", fmt.Errorf("option %q requires an argument", cmd)
		}
		c := t.chains[rest[0]]
		if c == nil {
			return nil, rest[0], errors.New("No chain/target/match by that name")
		}
		return c, rest[0], nil
	}
	switch cmd {
	case "-A", "--append":
		c, _, err := chainArg()
		if err != nil {
			return err
		}
		r, err := t.newRule(tname, rest[1:])
		if err != nil {
			return err
		}
		r.pending = t.inBatch
		c.rules = append(c.rules, r)
	case "-I", "--insert":
		c, _, err := chainArg()
		if err != nil {
			return err
		}
		spec, pos := rest[1:], 1
		if len(spec) > 0 && isNumber(spec[0]) {
			pos, _ = strconv.Atoi(spec[0])
			spec = spec[1:]
		}
		if pos < 1 || pos > len(c.rules)+1 {
			return errors.New("Index of insertion too big")
		}
		r, err := t.newRule(tname, spec)
		if err != nil {
			return err
		}
		r.pending = t.inBatch
		c.rules = slices.Insert(c.rules, pos-1, r)
	case "-R", "--replace":
		c, _, err := chainArg()
		if err != nil {
			return err
		}
		if len(rest) < 2 || !isNumber(rest[1]) {
			return fmt.Errorf("option %q requires a rule number", cmd)
		}
		n, _ := strconv.Atoi(rest[1])
		if n < 1 || n > len(c.rules) {
			return errors.New("Index of replacement too big")
		}
		if t.nft && c.rules[n-1].pending {
			// iptables-nft-restore 1.8.9 crashes or drops rules on this.
			return errors.New("-R of a rule added in this batch (breaks iptables-nft-restore)")
		}
		r, err := t.newRule(tname, rest[2:])
		if err != nil {
			return err
		}
		r.pending = t.inBatch
		c.rules[n-1] = r
	case "-D", "--delete":
		c, _, err := chainArg()
		if err != nil {
			return err
		}
		spec := rest[1:]
		if len(spec) == 1 && isNumber(spec[0]) {
			n, _ := strconv.Atoi(spec[0])
			if n < 1 || n > len(c.rules) {
				return errors.New("Index of deletion too big")
			}
			c.rules = slices.Delete(c.rules, n-1, n)
			return nil
		}
		i := c.find(ruleText(normalizeArgs(spec)))
		if i < 0 {
			return errors.New("Bad rule (does a matching rule exist in that chain?)")
		}
		c.rules = slices.Delete(c.rules, i, i+1)
	case "-F", "--flush":
		if len(rest) == 0 {
			for _, c := range t.chains {
				c.rules = nil
			}
			return nil
		}
		c, _, err := chainArg()
		if err != nil {
			return err
		}
		c.rules = nil
	case "-X", "--delete-chain":
		if len(rest) == 0 {
			for _, name := range t.orderedNames(tname) {
				if !t.chains[name].builtin {
					if err := t.deleteChain(name); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if t.chains[rest[0]] == nil {
			return errors.New("No chain/target/match by that name")
		}
		return t.deleteChain(rest[0])
	case "-N", "--new-chain":
		if len(rest) != 1 {
			return fmt.Errorf("option %q requires exactly one argument", cmd)
		}
		if t.chains[rest[0]] != nil {
			return errors.New("Chain already exists")
		}
		if err := validChainName(rest[0]); err != nil {
			return err
		}
		t.chains[rest[0]] = &chain{name: rest[0]}
	case "-P", "--policy":
		if len(rest) != 2 {
			return fmt.Errorf("option %q requires a chain and a policy", cmd)
		}
		c := t.chains[rest[0]]
		if c == nil || !c.builtin {
			return errors.New("Bad built-in chain name")
		}
		if rest[1] != "ACCEPT" && rest[1] != "DROP" {
			return errors.New("Bad policy name")
		}
		c.policy = rest[1]
	case "-Z", "--zero":
		// Counters are not modelled.
	default:
		return fmt.Errorf("Bad argument `%s'", cmd)
	}
	return nil
}

func (t *table) deleteChain(name string) error {
	c := t.chains[name]
	switch {
	case c.builtin:
		return fmt.Errorf("can't delete built-in chain %s", name)
	case len(c.rules) > 0:
		return fmt.Errorf("chain %s: Directory not empty", name)
	case t.references(name) > 0:
		return fmt.Errorf("chain %s: Device or resource busy (referenced)", name)
	}
	delete(t.chains, name)
	return nil
}

// newRule validates a rule spec against the table.
func (t *table) newRule(tname ipt.Table, args []string) (rule, error) {
	toks := normalizeArgs(args)
	r := rule{text: ruleText(toks)}
	seenTarget := false
	for i := 0; i < len(toks); i++ {
		switch toks[i] {
		case "-j", "--jump", "-g", "--goto":
			if i+1 >= len(toks) {
				return rule{}, fmt.Errorf("option %q requires an argument", toks[i])
			}
			if seenTarget {
				return rule{}, errors.New("multiple -j flags not allowed")
			}
			seenTarget = true
			target, isGoto := toks[i+1], toks[i] == "-g" || toks[i] == "--goto"
			if c := t.chains[target]; c != nil {
				if c.builtin {
					return rule{}, fmt.Errorf("can't jump to built-in chain `%s'", target)
				}
				r.target = target
			} else if ipt.IsExtensionTarget(target) && !isGoto {
				if allowed := ipt.ExtensionTargetTables(target); allowed != nil && !slices.Contains(allowed, tname) {
					return rule{}, fmt.Errorf("target %s is not valid in table %s (Invalid argument)", target, tname)
				}
			} else {
				return rule{}, fmt.Errorf("Couldn't load target `%s':No such file or directory", target)
			}
			i++
		}
	}
	return r, nil
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// normalizeArgs turns the long spellings of the options that decide a rule's
// identity into the short ones iptables-save prints, so that specs given
// either way compare equal.
func normalizeArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch a {
		case "--jump":
			a = "-j"
		case "--goto":
			a = "-g"
		case "--match":
			a = "-m"
		case "--protocol":
			a = "-p"
		case "--source", "--src":
			a = "-s"
		case "--destination", "--dst":
			a = "-d"
		case "--in-interface":
			a = "-i"
		case "--out-interface":
			a = "-o"
		}
		out[i] = a
	}
	return out
}

// ruleText renders tokens like iptables-save: a comment is quoted unless it
// consists only of letters, digits, '-' and '_' (xtables_save_string), and
// any other token needing it is quoted the same way.
func ruleText(toks []string) string {
	var b strings.Builder
	for i, tok := range toks {
		if i > 0 {
			b.WriteByte(' ')
		}
		quote := tok == "" || strings.ContainsAny(tok, " \t\"'\\")
		if i > 0 && toks[i-1] == "--comment" {
			quote = tok == "" || strings.IndexFunc(tok, func(r rune) bool {
				return !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
			}) >= 0
		}
		if !quote {
			b.WriteString(tok)
			continue
		}
		b.WriteByte('"')
		for _, r := range tok {
			if r == '"' || r == '\\' || r == '\'' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	return b.String()
}
