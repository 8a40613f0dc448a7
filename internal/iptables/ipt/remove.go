package ipt

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// RemoveChains flushes and deletes every chain of table that ours selects,
// in one restore, and returns how many it removed. Flush all, then delete
// all, in one batch: no packet sees a half-removed chain, and references
// between the removed chains are gone before the chains go. Rules in other
// chains that jump to them must be deleted first.
func RemoveChains(ctx context.Context, iface Interface, table Table, ours func(chain string) bool) (int, error) {
	chains, err := iface.ListChains(ctx, table)
	if err != nil {
		return 0, fmt.Errorf("listing %s chains: %w", table, err)
	}
	var remove []string
	for _, c := range chains {
		if ours(c) {
			remove = append(remove, c)
		}
	}
	if len(remove) == 0 {
		return 0, nil
	}
	sort.Strings(remove)
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range remove {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range remove {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	if err := iface.Restore(ctx, []byte(b.String())); err != nil {
		return 0, fmt.Errorf("removing %s chains: %w", table, err)
	}
	return len(remove), nil
}
