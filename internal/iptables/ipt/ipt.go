// Package ipt is the proxy's boundary to the kernel's iptables.
//
// Everything that programs or reads iptables goes through Interface, so the
// sync loop can run against the stateful fake in ipt/testing in unit tests and
// against Runner (the iptables, iptables-save and iptables-restore binaries)
// on a node. Bulk changes go through Restore (one `iptables-restore
// --noflush` per sync, as kube-proxy does); the single-rule methods exist for
// the few rules the proxy owns in built-in chains and for cleanup.
//
// The package also chooses the iptables backend (DetectBackend), helps log the
// lines around a failed restore (ContextLines) and detects an external flush
// of our rules (EnsureCanary, CanaryIntact).
package ipt

import (
	"context"
	"fmt"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Table is an iptables table name.
type Table string

const (
	TableNAT    Table = "nat"
	TableFilter Table = "filter"
	TableMangle Table = "mangle"
	TableRaw    Table = "raw"
)

// Backend is the iptables 1.8 operating mode: the same command-line tools
// program either the legacy x_tables kernel API or nf_tables. Both can hold
// rules at once, and rules in one are invisible to the other's tools, so the
// proxy must use the backend the rest of the node (kubelet, CNI) uses.
type Backend string

const (
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
)

// RulePosition says where EnsureRule puts a missing rule.
type RulePosition int

const (
	// Append adds the rule at the end of the chain.
	Append RulePosition = iota
	// Prepend inserts the rule at position 1, ahead of rules other software
	// may have added to a built-in chain.
	Prepend
)

func (p RulePosition) String() string {
	if p == Prepend {
		return "prepend"
	}
	return "append"
}

// Interface is the kernel boundary for iptables of one IP family and backend.
// Implementations are not safe for concurrent use; the proxy has exactly one
// goroutine touching the kernel.
type Interface interface {
	Family() model.Family
	Backend() Backend

	// Restore feeds data to `iptables-restore --noflush` (ip6tables-restore for
	// IPv6). Tables are committed one at a time at their COMMIT line, like the
	// real tool: when a later table fails, earlier tables of the same batch
	// stay applied; the failing table is left untouched. On failure the error
	// is a *RestoreError.
	Restore(ctx context.Context, data []byte) error
	// RestoreTest is `iptables-restore --test --noflush`: parse and check
	// without committing anything. How much is checked depends on the
	// backend: legacy checks chain existence and references against the
	// current state, nft checks only syntax, and neither runs the kernel's
	// target checks (e.g. DNAT outside the nat table). A nil result is
	// therefore no guarantee that Restore succeeds.
	RestoreTest(ctx context.Context, data []byte) error

	// SaveTable returns `iptables-save -t table` output.
	SaveTable(ctx context.Context, table Table) ([]byte, error)
	// ListChains returns the built-in and user chains of a table.
	ListChains(ctx context.Context, table Table) ([]string, error)

	ChainExists(table Table, chain string) (bool, error)
	// EnsureChain creates chain if missing and reports whether it existed.
	EnsureChain(table Table, chain string) (existed bool, err error)
	// EnsureRule makes sure the rule args exist in chain, adding it at pos if
	// missing. The chain must exist.
	EnsureRule(pos RulePosition, table Table, chain string, args ...string) (existed bool, err error)
	RuleExists(table Table, chain string, args ...string) (bool, error)
	// DeleteRule removes the rule; a missing rule or chain is not an error.
	DeleteRule(table Table, chain string, args ...string) error
	// FlushChain removes all rules of chain; a missing chain is not an error.
	FlushChain(table Table, chain string) error
	// DeleteChain removes an empty, unreferenced user chain; a missing chain
	// is not an error.
	DeleteChain(table Table, chain string) error

	// HasRandomFully reports whether MASQUERADE supports --random-fully.
	HasRandomFully() bool
}

// RestoreError is a failed iptables-restore run.
type RestoreError struct {
	// Line is the 1-based input line iptables-restore blamed, 0 if unknown.
	// Errors found only when the kernel checks a table (for example a target
	// used in the wrong table) are blamed by the legacy backend on the
	// table's COMMIT line, and by nft on the rule itself; jumps to missing
	// chains are blamed by nft on the COMMIT line. Use ContextLines to log the
	// neighbourhood.
	Line int
	// Stderr is what iptables-restore printed, trimmed.
	Stderr string
	// Err is the underlying error (exit status, timeout), if any.
	Err error
}

func (e *RestoreError) Error() string {
	var b strings.Builder
	b.WriteString("iptables-restore failed")
	if e.Line > 0 {
		fmt.Fprintf(&b, " at line %d", e.Line)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	if e.Stderr != "" {
		b.WriteString(": ")
		b.WriteString(strings.ReplaceAll(e.Stderr, "\n", "; "))
	}
	return b.String()
}

func (e *RestoreError) Unwrap() error { return e.Err }

// IsExtensionTarget reports whether name is an iptables target provided by
// an extension (or a verdict) rather than a user chain, for the targets the
// proxy and common node software use. A rule's `-j NAME` that is neither
// this nor an existing user chain is rejected by iptables.
func IsExtensionTarget(name string) bool {
	switch name {
	case "ACCEPT", "DROP", "RETURN", "QUEUE",
		"REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP",
		"MARK", "CONNMARK", "CT", "NOTRACK", "TRACE", "LOG", "NFLOG", "NFQUEUE",
		"TPROXY", "TCPMSS", "DSCP", "TOS", "TTL", "HL", "CHECKSUM", "CLASSIFY",
		"CONNSECMARK", "SECMARK", "SET", "AUDIT", "IDLETIMER", "LED", "TEE",
		"SYNPROXY", "HMARK", "RATEEST", "ULOG":
		return true
	}
	return false
}

// ExtensionTargetTables returns the only tables the kernel accepts target in,
// or nil when it is valid in every table.
func ExtensionTargetTables(target string) []Table {
	switch target {
	case "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP":
		return []Table{TableNAT}
	case "REJECT":
		return []Table{TableFilter}
	case "CT", "NOTRACK":
		return []Table{TableRaw}
	case "TPROXY":
		return []Table{TableMangle}
	}
	return nil
}

// JumpTarget returns the -j/--jump or -g/--goto target of a rule spec, or ""
// if it has none.
func JumpTarget(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			return args[i+1]
		}
	}
	return ""
}
