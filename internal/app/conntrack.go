package app

import (
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/config"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// newStaleCleaner and applyConntrackSysctls are wired to package conntrack.
func newStaleCleaner(fam model.Family, log *zap.Logger, m *metrics.Metrics) (StaleCleaner, error) {
	return nil, nil
}

func applyConntrackSysctls(cfg *config.Config, log *zap.Logger) error { return nil }
