// Package sync runs the proxy's sync function at a bounded frequency, like
// kube-proxy's BoundedFrequencyRunner:
//
//   - Request asks for a run "soon"; requests arriving while a run is queued
//     or in progress coalesce into one follow-up run.
//   - At most Burst runs happen back to back; after that at most one run per
//     MinInterval (a token bucket refilled at one token per MinInterval).
//   - Without requests, a run still happens MaxInterval after the previous
//     one finished (the periodic full resync).
//   - RetryAfter schedules a run no later than d from now (subject to the
//     token bucket), for retrying a failed sync.
//
// All waiting goes through an injected k8s.io/utils/clock.Clock, so tests
// drive the runner with a fake clock and never sleep.
package sync

import (
	"context"
	"errors"
	"fmt"
	gosync "sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// ErrAlreadyRunning is returned by Run when the runner's loop is already
// running in another goroutine.
var ErrAlreadyRunning = errors.New("runner is already running")

// Config configures a Runner.
type Config struct {
	// Name identifies the runner in logs.
	Name string
	// Fn is the work function. It is only ever called from the goroutine
	// that called Run, never concurrently with itself. An error is logged and,
	// when Retry is set, schedules a retry with exponential backoff.
	Fn func() error
	// MinInterval is the time a token takes to refill: after Burst
	// back-to-back runs, runs start at most once per MinInterval, measured
	// from the end of a run (so a slow sync still leaves the kernel a
	// MinInterval break). 0 means no throttling: requested runs start at
	// once.
	MinInterval time.Duration
	// MaxInterval is the longest time between the end of one run and the
	// start of the next, requests or not. 0 disables periodic runs.
	// Must be >= MinInterval when set.
	MaxInterval time.Duration
	// Burst is the token bucket's size: how many runs may start back to back.
	// 0 means 1.
	Burst int
	// Retry, when set, makes the runner call RetryAfter(Retry.Next()) after
	// Fn fails, and reset the backoff after Fn succeeds. Leave it nil to
	// call RetryAfter yourself.
	Retry *Backoff
	// Clock defaults to the real clock.
	Clock clock.Clock
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
}

// Runner runs Config.Fn at a bounded frequency. Create it with New.
type Runner struct {
	name    string
	fn      func() error
	maxIntv time.Duration
	retry   *Backoff
	clock   clock.Clock
	log     *zap.Logger

	// lim is only touched by the Run goroutine.
	lim limiter

	running atomic.Bool
	// wake nudges the Run goroutine to re-evaluate its schedule. Buffered
	// with room for one: extra nudges coalesce.
	wake chan struct{}

	mu gosync.Mutex
	// pending: a run was requested and has not started yet.
	pending bool
	// retryAt: earliest requested retry time, zero when none.
	retryAt time.Time

	// idleHook, set only by tests, is called each time the loop is about to
	// block, with the time it will next run (zero: no run scheduled). It
	// lets tests step a fake clock exactly to the next deadline without
	// sleeping.
	idleHook func(next time.Time)
}

// New validates cfg and returns a runner. Nothing runs until Run is called.
func New(cfg Config) (*Runner, error) {
	if cfg.Fn == nil {
		return nil, fmt.Errorf("runner %q: Fn is required", cfg.Name)
	}
	if cfg.MinInterval < 0 {
		return nil, fmt.Errorf("runner %q: MinInterval %v is negative", cfg.Name, cfg.MinInterval)
	}
	if cfg.MaxInterval < 0 {
		return nil, fmt.Errorf("runner %q: MaxInterval %v is negative", cfg.Name, cfg.MaxInterval)
	}
	if cfg.MaxInterval > 0 && cfg.MaxInterval < cfg.MinInterval {
		return nil, fmt.Errorf("runner %q: MaxInterval %v is less than MinInterval %v", cfg.Name, cfg.MaxInterval, cfg.MinInterval)
	}
	if cfg.Burst < 0 {
		return nil, fmt.Errorf("runner %q: Burst %d is negative", cfg.Name, cfg.Burst)
	}
	if cfg.Retry != nil {
		if err := cfg.Retry.validate(); err != nil {
			return nil, fmt.Errorf("runner %q: %w", cfg.Name, err)
		}
	}
	burst := cfg.Burst
	if burst == 0 {
		burst = 1
	}
	clk := cfg.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Runner{
		name:    cfg.Name,
		fn:      cfg.Fn,
		maxIntv: cfg.MaxInterval,
		retry:   cfg.Retry,
		clock:   clk,
		log:     log.With(zap.String("runner", cfg.Name)),
		lim:     limiter{interval: cfg.MinInterval, burst: burst},
		wake:    make(chan struct{}, 1),
	}, nil
}

// Request asks for a run as soon as the token bucket allows. It never
// blocks; requests coalesce until the run starts. A request made before Run
// is called is served when Run starts.
func (r *Runner) Request() {
	r.mu.Lock()
	r.pending = true
	r.mu.Unlock()
	r.nudge()
}

// RetryAfter asks for a run no later than d from now (later if the token
// bucket is empty). If an earlier retry is already scheduled it wins; any
// run that starts after this call satisfies it. Safe to call from inside Fn.
func (r *Runner) RetryAfter(d time.Duration) {
	if d < 0 {
		d = 0
	}
	at := r.clock.Now().Add(d)
	r.mu.Lock()
	if r.retryAt.IsZero() || at.Before(r.retryAt) {
		r.retryAt = at
	}
	r.mu.Unlock()
	r.nudge()
}

func (r *Runner) nudge() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run runs the loop until ctx is done, then returns nil. A run in progress
// when ctx is cancelled finishes first; Fn is not interrupted. Run returns
// ErrAlreadyRunning if another Run call is active.
func (r *Runner) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.running.Store(false)

	r.log.Debug("sync runner started")
	defer r.log.Debug("sync runner stopped")

	// The first periodic run is due MaxInterval after start: like kube-proxy,
	// the initial sync is requested by the caller once its caches are ready.
	periodicAt := r.clock.Now().Add(r.maxIntv)
	for {
		if ctx.Err() != nil {
			return nil
		}
		// Drop stale nudges: the state read below already reflects them.
		select {
		case <-r.wake:
		default:
		}

		now := r.clock.Now()
		r.mu.Lock()
		pending, retryAt := r.pending, r.retryAt
		r.mu.Unlock()

		next, ok := r.nextRun(now, pending, retryAt, periodicAt)
		if ok && !next.After(now) {
			periodicAt = r.runOnce()
			continue
		}

		var timerC <-chan time.Time
		var timer clock.Timer
		if ok {
			timer = r.clock.NewTimer(next.Sub(now))
			timerC = timer.C()
		}
		// Only after the timer exists, so a test stepping its fake clock
		// in reaction to the hook cannot miss it.
		if r.idleHook != nil {
			if !ok {
				next = time.Time{}
			}
			r.idleHook(next)
		}
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// nextRun is when the next run should start: the earliest wanted time
// (now for a pending request, the retry time, the periodic time), delayed
// until a token is available. ok is false when no run is wanted at all.
func (r *Runner) nextRun(now time.Time, pending bool, retryAt, periodicAt time.Time) (time.Time, bool) {
	var want time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(want) {
			want, ok = t, true
		}
	}
	if pending {
		consider(now)
	}
	if !retryAt.IsZero() {
		consider(retryAt)
	}
	if r.maxIntv > 0 {
		consider(periodicAt)
	}
	if !ok {
		return time.Time{}, false
	}
	if avail := r.lim.availableAt(); avail.After(want) {
		want = avail
	}
	return want, true
}

// runOnce calls Fn and returns the next periodic run time.
func (r *Runner) runOnce() time.Time {
	// Clear what this run satisfies before calling Fn, so requests and
	// retries made during the run (including by Fn itself) lead to another
	// run.
	r.mu.Lock()
	r.pending = false
	r.retryAt = time.Time{}
	r.mu.Unlock()

	err := r.fn()
	end := r.clock.Now()
	r.lim.take(end)

	if err != nil {
		if r.retry != nil {
			d := r.retry.Next()
			r.log.Error("sync failed, retrying", zap.Error(err), zap.Duration("retry_in", d))
			r.RetryAfter(d)
		} else {
			r.log.Error("sync failed", zap.Error(err))
		}
	} else if r.retry != nil {
		r.retry.Reset()
	}
	return end.Add(r.maxIntv)
}

// limiter is a token bucket written as GCRA (generic cell rate algorithm):
// one "theoretical arrival time" instead of a token count, so it is exact
// with durations and needs no floating point.
type limiter struct {
	interval time.Duration // one token per interval; 0 = unlimited
	burst    int
	tat      time.Time
}

// availableAt is the earliest time a token is available.
func (l *limiter) availableAt() time.Time {
	if l.interval == 0 || l.tat.IsZero() {
		return time.Time{}
	}
	return l.tat.Add(-time.Duration(l.burst-1) * l.interval)
}

// take consumes a token at time at.
func (l *limiter) take(at time.Time) {
	if l.interval == 0 {
		return
	}
	if l.tat.Before(at) {
		l.tat = at
	}
	l.tat = l.tat.Add(l.interval)
}
