package iptables

import (
	"context"
	"errors"
	"fmt"

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
		n, err := ipt.RemoveChains(ctx, iface, table, render.IsOurs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n == 0 {
			continue
		}
		log.Info("removed kpr chains", zap.String("ip_family", iface.Family().String()),
			zap.String("backend", string(iface.Backend())), zap.String("table", string(table)), zap.Int("chains", n))
	}
	return errors.Join(errs...)
}
