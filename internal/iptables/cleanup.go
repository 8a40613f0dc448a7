package iptables

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/iptables/render"
)

// Cleanup removes every rule and chain kpr created in one family and
// backend, and nothing else: the jumps from built-in chains, then all chains
// named with kpr's prefix (flushed and deleted in one restore per table, so
// no packet sees a half-removed Service), then the canary. It is what
// `proxy --cleanup` runs, and it is idempotent.
func Cleanup(ctx context.Context, iface ipt.Interface, log *zap.Logger) error {
	var errs []error
	// Jumps first, so no packet enters a chain while it is being removed.
	// Both variants of the jump list, in case the localhost setting changed
	// since the rules were made.
	for _, localhost := range []bool{true, false} {
		for _, j := range render.Jumps(iface.Family(), localhost) {
			if err := iface.DeleteRule(ipt.Table(j.Table), j.From, j.RuleArgs()...); err != nil {
				errs = append(errs, fmt.Errorf("deleting jump %s/%s -> %s: %w", j.Table, j.From, j.To, err))
			}
		}
	}
	for _, table := range []ipt.Table{ipt.TableFilter, ipt.TableNAT, ipt.TableMangle} {
		chains, err := iface.ListChains(ctx, table)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s chains: %w", table, err))
			continue
		}
		var ours []string
		for _, c := range chains {
			if strings.HasPrefix(c, render.Prefix) {
				ours = append(ours, c)
			}
		}
		if len(ours) == 0 {
			continue
		}
		sort.Strings(ours)
		var b strings.Builder
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range ours {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range ours {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
		if err := iface.Restore(ctx, []byte(b.String())); err != nil {
			errs = append(errs, fmt.Errorf("removing %s chains: %w", table, err))
			continue
		}
		log.Info("removed kpr chains", zap.String("ip_family", iface.Family().String()),
			zap.String("backend", string(iface.Backend())), zap.String("table", string(table)), zap.Int("chains", len(ours)))
	}
	return errors.Join(errs...)
}
