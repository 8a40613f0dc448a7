package takeover

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DefaultGuardInterval is how often the Guard looks for kube-proxy's rules
// coming back. It bounds how long rules of a kube-proxy that was running
// after the takeover (it re-prepends its jumps within one of its sync
// periods once its canary is gone) can stay ahead of kpr's after it stops.
const DefaultGuardInterval = 10 * time.Second

// GuardConfig configures a Guard.
type GuardConfig struct {
	Takeover *Takeover
	// Interval between presence checks; DefaultGuardInterval if zero.
	Interval time.Duration
	// RequestSync asks the proxy's sync loop to run; the loop then calls
	// AfterSync, which runs the takeover. Required unless DryRun.
	RequestSync func()
	Logger      *zap.Logger
}

// Guard ties the takeover to the proxy's sync loop:
//
//   - the first takeover runs right after the first successful sync, so
//     kpr's rules are complete and ahead of kube-proxy's before any of
//     kube-proxy's go;
//   - while kube-proxy keeps running on the node (its DaemonSet not yet
//     deleted), it notices its canary is gone and puts all its rules back,
//     jumps first. Watch sees that and the next AfterSync removes them
//     again, so when kube-proxy finally stops, its stale rules do not stay
//     ahead of kpr's.
//
// Kernel changes happen only in AfterSync, i.e. in the sync loop's
// goroutine; Watch only reads.
type Guard struct {
	cfg GuardConfig
	log *zap.Logger

	started atomic.Bool // the first takeover ran
	due     atomic.Bool // kube-proxy's rules are back (or the last run failed)

	mu      sync.Mutex
	last    Result
	lastErr error
	runs    int
	reruns  int
	ready   chan struct{} // closed after the first run
	readyMu sync.Once
}

// NewGuard returns a Guard.
func NewGuard(cfg GuardConfig) *Guard {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultGuardInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Guard{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}
}

// AfterSync is called by the sync loop after every sync with its result. It
// never fails the sync: takeover errors are logged and retried.
func (g *Guard) AfterSync(ctx context.Context, syncErr error) {
	if syncErr != nil {
		return
	}
	first := !g.started.Load()
	if !first && !g.due.Swap(false) {
		return
	}
	if !first && g.cfg.Takeover.cfg.DryRun {
		return
	}
	g.started.Store(true)
	res, err := g.cfg.Takeover.Run(ctx)
	g.mu.Lock()
	g.last, g.lastErr = res, err
	g.runs++
	if !first {
		g.reruns++
	}
	g.mu.Unlock()
	fields := []zap.Field{zap.Bool("dry_run", res.DryRun), zap.Bool("first", first),
		zap.Int("chains_removed", res.Chains), zap.Int("jump_rules_removed", res.Jumps),
		zap.Int("other_objects_removed", res.Others), zap.Duration("duration", res.Duration)}
	removed := res.Chains+res.Jumps+res.Others > 0
	switch {
	case err != nil:
		g.due.Store(true) // retried at the next check
	case removed && !res.DryRun:
		// Look once more, in full, at the next check: a kube-proxy still
		// running puts its rules back, and one stopped half-way through
		// doing so leaves chains no cheap probe finds. A run that finds
		// nothing ends this.
		g.due.Store(true)
	}
	switch {
	case err != nil:
		g.log.Error("takeover: could not remove all of kube-proxy's rules; will retry", append(fields, zap.Error(err))...)
	case removed && !first:
		g.log.Warn("takeover: kube-proxy's rules were back on this node, so kube-proxy is still running here (or stopped just after putting them back); "+res.Summary()+". Delete or scale away the kube-proxy DaemonSet (docs/migrate.md)", fields...)
	default:
		g.log.Info("takeover: "+res.Summary(), fields...)
	}
	g.readyMu.Do(func() { close(g.ready) })
}

// Takeover returns the guarded Takeover.
func (g *Guard) Takeover() *Takeover { return g.cfg.Takeover }

// Done is closed once the first takeover (or dry run) has run.
func (g *Guard) Done() <-chan struct{} { return g.ready }

// Last returns the latest run's result and error, and how many runs there
// were (reruns: those after kube-proxy's rules came back or a failure).
func (g *Guard) Last() (res Result, err error, runs, reruns int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last, g.lastErr, g.runs, g.reruns
}

// Watch checks for kube-proxy's rules every Interval until ctx ends. When
// they are back it logs why and requests a sync, whose AfterSync removes
// them. In a dry run it does nothing.
func (g *Guard) Watch(ctx context.Context) {
	if g.cfg.Takeover.cfg.DryRun {
		return
	}
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.Check(ctx)
	}
}

// Check is one round of Watch: if the first takeover ran and kube-proxy's
// rules are back (or the last run failed), it requests a sync and reports
// true.
func (g *Guard) Check(ctx context.Context) bool {
	if g.cfg.Takeover.cfg.DryRun || !g.started.Load() {
		return false
	}
	if g.due.Load() {
		g.request()
		return true
	}
	// Between the follow-up runs, the cheap probe.
	present, where := g.cfg.Takeover.Present(ctx)
	if !present {
		return false
	}
	g.log.Info("takeover: found kube-proxy's rules on this node again; removing them at the next sync", zap.String("found", where))
	g.due.Store(true)
	g.request()
	return true
}

func (g *Guard) request() {
	if g.cfg.RequestSync != nil {
		g.cfg.RequestSync()
	}
}
