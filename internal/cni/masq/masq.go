// Package masq keeps podnet's ipMasq rules: traffic from this node's pods to
// anything outside the cluster CIDR leaves with the node's address.
//
// The rules are node-level, not per pod: one chain, PODNET-MASQ in the nat
// table, jumped to from POSTROUTING, whose content follows from the node's
// pod subnet and the cluster CIDR. ADD makes the chain match (idempotent,
// cheap when nothing changed); DEL has nothing to undo. Compared with one
// chain per container (the bridge plugin's way) there is nothing to leak and
// `iptables -t nat -S PODNET-MASQ` shows the whole policy in four lines.
package masq

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

const (
	// Chain is podnet's chain in the nat table.
	Chain = "PODNET-MASQ"
	table = "nat"
	// postrouting is the built-in chain that jumps to Chain.
	postrouting = "POSTROUTING"
)

// Table is the part of go-iptables' *iptables.IPTables that masq uses (one
// per address family); the fake lives in masq/testing.
type Table interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Append(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	HasRandomFully() bool
}

var _ Table = (*iptables.IPTables)(nil)

// NewTable returns the real iptables (is6=false) or ip6tables table. It
// runs the binaries, so it acts in the network namespace of the calling
// process.
func NewTable(is6 bool) (Table, error) {
	proto := iptables.ProtocolIPv4
	if is6 {
		proto = iptables.ProtocolIPv6
	}
	t, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("ipMasq needs %s: %w", map[bool]string{false: "iptables", true: "ip6tables"}[is6], err)
	}
	return t, nil
}

// Policy is what one address family's chain must express.
type Policy struct {
	// PodSubnet is this node's pod subnet of the family.
	PodSubnet netip.Prefix
	// ClusterCIDRs of the same family: destinations that keep the pod's
	// source address.
	ClusterCIDRs []netip.Prefix
	// RandomFully adds --random-fully to MASQUERADE (fewer SNAT port
	// collisions under load), when the iptables binary supports it.
	RandomFully bool
}

// JumpRule is the POSTROUTING rule that sends everything to Chain.
func JumpRule() []string {
	return []string{"-m", "comment", "--comment", "podnet: masquerade pod traffic leaving the cluster", "-j", Chain}
}

// ChainRules renders Chain's rules, in order, in the canonical argument
// order `iptables -S` prints (so the current chain can be compared as text;
// comments avoid characters -S would escape).
func ChainRules(p Policy) [][]string {
	rules := [][]string{
		{"!", "-s", p.PodSubnet.String(), "-m", "comment", "--comment", "podnet: source is not a pod of this node", "-j", "RETURN"},
	}
	for _, c := range p.ClusterCIDRs {
		if c.Addr().Is6() != p.PodSubnet.Addr().Is6() {
			continue
		}
		rules = append(rules, []string{"-d", c.String(), "-m", "comment", "--comment", "podnet: to the cluster, keep pod source", "-j", "RETURN"})
	}
	multicast := "224.0.0.0/4"
	if p.PodSubnet.Addr().Is6() {
		multicast = "ff00::/8"
	}
	rules = append(rules, []string{"-d", multicast, "-m", "comment", "--comment", "podnet: multicast is never masqueraded", "-j", "RETURN"})
	masq := []string{"-m", "comment", "--comment", "podnet: leaving the cluster", "-j", "MASQUERADE"}
	if p.RandomFully {
		masq = append(masq, "--random-fully")
	}
	return append(rules, masq)
}

// normalize strips the quotes `iptables -S` puts around comments.
func normalize(line string) string { return strings.ReplaceAll(line, `"`, "") }

// Ensure makes Chain express p and POSTROUTING jump to it. It changes
// nothing when the rules are already right and reports whether it changed
// anything. Callers serialise Ensure across processes (podnet holds its
// IPAM lock), so check-then-act is safe.
func Ensure(t Table, p Policy) (changed bool, err error) {
	exists, err := t.ChainExists(table, Chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s: %w", Chain, err)
	}
	if !exists {
		if err := t.NewChain(table, Chain); err != nil {
			return false, fmt.Errorf("creating chain %s: %w", Chain, err)
		}
		changed = true
	}

	want := ChainRules(p)
	have, err := t.List(table, Chain)
	if err != nil {
		return changed, fmt.Errorf("listing chain %s: %w", Chain, err)
	}
	if !sameRules(have, want) {
		if err := t.ClearChain(table, Chain); err != nil {
			return changed, fmt.Errorf("flushing chain %s: %w", Chain, err)
		}
		for _, r := range want {
			if err := t.Append(table, Chain, r...); err != nil {
				return true, fmt.Errorf("adding rule %q to %s: %w", strings.Join(r, " "), Chain, err)
			}
		}
		changed = true
	}

	ok, err := t.Exists(table, postrouting, JumpRule()...)
	if err != nil {
		return changed, fmt.Errorf("checking %s jump: %w", postrouting, err)
	}
	if !ok {
		if err := t.Append(table, postrouting, JumpRule()...); err != nil {
			return true, fmt.Errorf("adding %s jump to %s: %w", postrouting, Chain, err)
		}
		changed = true
	}
	return changed, nil
}

// sameRules compares `iptables -S Chain` output with the wanted rules.
func sameRules(have []string, want [][]string) bool {
	var rules []string
	for _, l := range have {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, normalize(l))
		}
	}
	if len(rules) != len(want) {
		return false
	}
	for i, w := range want {
		if rules[i] != normalize("-A "+Chain+" "+strings.Join(w, " ")) {
			return false
		}
	}
	return true
}

// Teardown removes the jump and the chain; absent ones are fine.
func Teardown(t Table) error {
	var errs []error
	if err := t.DeleteIfExists(table, postrouting, JumpRule()...); err != nil {
		errs = append(errs, err)
	}
	exists, err := t.ChainExists(table, Chain)
	if err != nil {
		errs = append(errs, err)
	} else if exists {
		if err := t.ClearAndDeleteChain(table, Chain); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
