package ipt

import "fmt"

// CanaryChain holds the canary rule in each watched table.
const CanaryChain = "KPR-CANARY"

// CanaryComment marks the canary rule.
const CanaryComment = "kpr-canary"

// CanaryRule returns the canary rule spec (a fresh slice each call).
func CanaryRule() []string {
	return []string{"-m", "comment", "--comment", CanaryComment, "-j", "RETURN"}
}

// DefaultCanaryTables are watched when EnsureCanary/CanaryIntact get none.
func DefaultCanaryTables() []Table {
	return []Table{TableMangle, TableNAT, TableFilter}
}

// EnsureCanary creates the KPR-CANARY chain with its marker rule in each
// table (mangle, nat and filter by default). Nothing jumps to the chain; it
// exists only to be checked.
//
// A canary is how the proxy notices that someone else (a firewall reload,
// `iptables -t nat -F`, a node agent restoring a saved rule set) wiped rules
// behind its back: partial syncs only rewrite chains the proxy believes
// changed, so after such a flush they would never bring the rest back. When
// CanaryIntact reports false, the caller must force a full resync and then
// call EnsureCanary again.
func EnsureCanary(iface Interface, tables ...Table) error {
	if len(tables) == 0 {
		tables = DefaultCanaryTables()
	}
	for _, t := range tables {
		if _, err := iface.EnsureChain(t, CanaryChain); err != nil {
			return fmt.Errorf("canary in %s: %w", t, err)
		}
		if _, err := iface.EnsureRule(Append, t, CanaryChain, CanaryRule()...); err != nil {
			return fmt.Errorf("canary in %s: %w", t, err)
		}
	}
	return nil
}

// CanaryIntact reports whether the canary rule still exists in every table.
// It checks the rule, not just the chain: `iptables -t nat -F` flushes every
// chain's rules but keeps user chains, so a chain-only check would miss the
// most common external flush. false means "someone flushed; force a full
// resync".
func CanaryIntact(iface Interface, tables ...Table) (bool, error) {
	if len(tables) == 0 {
		tables = DefaultCanaryTables()
	}
	for _, t := range tables {
		ok, err := iface.ChainExists(t, CanaryChain)
		if err != nil {
			return false, fmt.Errorf("canary in %s: %w", t, err)
		}
		if !ok {
			return false, nil
		}
		ok, err = iface.RuleExists(t, CanaryChain, CanaryRule()...)
		if err != nil {
			return false, fmt.Errorf("canary in %s: %w", t, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}
