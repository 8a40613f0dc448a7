package app

import (
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/config"
	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// newStaleCleaner opens a ctnetlink socket in the proxy's network namespace
// for one family's stale-entry cleanup.
func newStaleCleaner(fam model.Family, log *zap.Logger, m *metrics.Metrics) (StaleCleaner, error) {
	nl, err := conntrack.NewNetlink(conntrack.NetlinkConfig{})
	if err != nil {
		return nil, err
	}
	c, err := conntrack.NewCleaner(conntrack.CleanerConfig{Family: fam, Conntrack: nl, Logger: log.Named("conntrack"), Metrics: m})
	if err != nil {
		return nil, err
	}
	return cleanerAdapter{c}, nil
}

type cleanerAdapter struct{ c *conntrack.Cleaner }

func (a cleanerAdapter) Cleanup(prev, cur *model.Snapshot, node *model.Node) (int, error) {
	r, err := a.c.Cleanup(prev, cur, node)
	return r.Deleted, err
}

// applyConntrackSysctls sets the --conntrack-* sysctls as kube-proxy does.
func applyConntrackSysctls(cfg *config.Config, log *zap.Logger) error {
	return conntrack.ApplySysctls(conntrack.SysctlConfig(cfg.Conntrack), conntrack.ProcSysctl{}, log.Named("conntrack"))
}
