package app

import (
	"os"
	gosync "sync"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/config"
	"github.com/kpr-proxy/kpr/internal/takeover"
)

// withTakeover wraps the sync function for --takeover-kube-proxy (and
// --takeover-dry-run): after the first successful sync, when kpr's rules are
// complete and ahead of kube-proxy's, the takeover removes kube-proxy's
// rules (or, in a dry run, prints what it would remove); later it removes
// them again whenever a kube-proxy still running on the node puts them
// back. Without the flags the sync function is returned as it is.
//
// The takeover runs inside the sync function, so kernel changes stay in the
// sync loop's goroutine; the guard's watcher only reads and requests syncs.
func (a *App) withTakeover(sync func() error) func() error {
	if !a.cfg.Takeover.Enabled && !a.cfg.Takeover.DryRun {
		return sync
	}
	log := a.log.Named("takeover")
	cfg := takeover.Discover(log)
	if a.cfg.Mode == config.ModeIPVS && cfg.IPVS != nil {
		// kpr's ipvs mode owns every virtual server of its families: it
		// adopts those it wants (kube-proxy used the same address, protocol
		// and port for the same Service port) and deletes the rest itself.
		cfg.IPVS = nil
		cfg.Notes = append(cfg.Notes, "IPVS virtual servers left to kpr's ipvs mode, which adopts or deletes kube-proxy's")
	}
	cfg.DryRun = a.cfg.Takeover.DryRun
	cfg.Out = os.Stdout
	tk, err := takeover.New(cfg)
	if err != nil {
		log.Error("takeover disabled", zap.Error(err))
		return sync
	}
	g := takeover.NewGuard(takeover.GuardConfig{
		Takeover: tk,
		Logger:   log,
		RequestSync: func() {
			if a.runner != nil {
				a.runner.Request()
			}
		},
	})
	log.Info("takeover of kube-proxy enabled: runs after the first successful sync",
		zap.Bool("dry_run", cfg.DryRun), zap.Strings("notes", cfg.Notes))
	var watch gosync.Once
	return func() error {
		err := sync()
		g.AfterSync(a.ctx, err)
		watch.Do(func() { go g.Watch(a.ctx) })
		return err
	}
}
