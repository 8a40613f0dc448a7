package sync

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	testingclock "k8s.io/utils/clock/testing"
)

// settleTimeout only guards against a deadlocked test; no assertion depends
// on it.
const settleTimeout = 30 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// harness drives a Runner with a fake clock. The runner's idle hook hands
// the next deadline to the test over an unbuffered channel, so the test and
// the loop take turns: after every action that wakes the loop the test waits
// for exactly one idle report, and then reads the recorded runs.
type harness struct {
	t      *testing.T
	clk    *testingclock.FakeClock
	r      *Runner
	idle   chan time.Time
	stop   chan struct{}
	done   chan error
	cancel context.CancelFunc

	// runs holds the fake time of each Fn call. Written by the loop
	// goroutine, read by the test only after an idle report (channel
	// handoff orders the accesses).
	runs []time.Time
	// hook, when set, runs inside Fn (in the loop goroutine).
	hook func(n int) error
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{
		t:    t,
		clk:  testingclock.NewFakeClock(t0),
		idle: make(chan time.Time),
		stop: make(chan struct{}),
		done: make(chan error, 1),
	}
	cfg.Clock = h.clk
	cfg.Logger = zaptest.NewLogger(t)
	cfg.Fn = func() error {
		h.runs = append(h.runs, h.clk.Now())
		if h.hook != nil {
			return h.hook(len(h.runs))
		}
		return nil
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.idleHook = func(next time.Time) {
		select {
		case h.idle <- next:
		case <-h.stop:
		}
	}
	h.r = r
	return h
}

// start runs the loop and returns its first idle report.
func (h *harness) start() time.Time {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.r.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		close(h.stop)
		<-h.done
	})
	return h.waitIdle()
}

func (h *harness) waitIdle() time.Time {
	h.t.Helper()
	select {
	case next := <-h.idle:
		return next
	case <-time.After(settleTimeout):
		h.t.Fatalf("runner did not settle")
		return time.Time{}
	}
}

// request calls Request and waits for the loop to settle.
func (h *harness) request() time.Time {
	h.t.Helper()
	h.r.Request()
	return h.waitIdle()
}

// stepTo advances the fake clock to next, which must be the deadline the
// loop reported, and waits for the loop to settle again.
func (h *harness) stepTo(next time.Time) time.Time {
	h.t.Helper()
	if next.IsZero() {
		h.t.Fatalf("stepTo: no run scheduled")
	}
	h.clk.SetTime(next)
	return h.waitIdle()
}

// stepBy advances the fake clock by d, which must stay before the reported
// deadline, so the loop is not woken.
func (h *harness) stepBy(d time.Duration, deadline time.Time) {
	h.t.Helper()
	if !h.clk.Now().Add(d).Before(deadline) {
		h.t.Fatalf("stepBy(%v) would reach the deadline %v", d, deadline)
	}
	h.clk.Step(d)
}

func (h *harness) wantRuns(offsets ...time.Duration) {
	h.t.Helper()
	if len(h.runs) != len(offsets) {
		h.t.Fatalf("got %d runs at %v, want %d at %v", len(h.runs), rel(h.runs), len(offsets), offsets)
	}
	for i, off := range offsets {
		if got := h.runs[i].Sub(t0); got != off {
			h.t.Fatalf("run %d at t0+%v, want t0+%v (all runs: %v)", i, got, off, rel(h.runs))
		}
	}
}

func (h *harness) wantNext(next time.Time, off time.Duration) {
	h.t.Helper()
	if next.IsZero() {
		h.t.Fatalf("no run scheduled, want one at t0+%v", off)
	}
	if got := next.Sub(t0); got != off {
		h.t.Fatalf("next run at t0+%v, want t0+%v", got, off)
	}
}

func rel(ts []time.Time) []time.Duration {
	out := make([]time.Duration, len(ts))
	for i, t := range ts {
		out[i] = t.Sub(t0)
	}
	return out
}

func TestNewValidates(t *testing.T) {
	fn := func() error { return nil }
	for name, cfg := range map[string]Config{
		"no fn":            {MinInterval: time.Second, MaxInterval: time.Minute},
		"negative min":     {Fn: fn, MinInterval: -1},
		"negative max":     {Fn: fn, MaxInterval: -1},
		"max below min":    {Fn: fn, MinInterval: time.Minute, MaxInterval: time.Second},
		"negative burst":   {Fn: fn, Burst: -1},
		"bad backoff":      {Fn: fn, Retry: &Backoff{Initial: 0, Max: time.Second}},
		"backoff max<init": {Fn: fn, Retry: &Backoff{Initial: time.Second, Max: time.Millisecond}},
		"backoff factor":   {Fn: fn, Retry: &Backoff{Initial: time.Second, Max: time.Minute, Factor: 0.5}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := New(Config{Fn: fn, MinInterval: time.Second, MaxInterval: time.Second}); err != nil {
		t.Errorf("min == max rejected: %v", err)
	}
}

func TestNoRunWithoutRequestBeforeMaxInterval(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: 10 * time.Second})
	next := h.start()
	h.wantRuns()
	h.wantNext(next, 10*time.Second)
}

func TestBurst(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Hour, Burst: 3})
	h.start()

	// Three back-to-back runs use up the bucket.
	h.request()
	h.request()
	next := h.request()
	h.wantRuns(0, 0, 0)
	h.wantNext(next, time.Hour)

	// The fourth waits for a token: one refills per MinInterval.
	next = h.request()
	h.wantRuns(0, 0, 0)
	h.wantNext(next, time.Second)

	next = h.stepTo(next)
	h.wantRuns(0, 0, 0, time.Second)
	h.wantNext(next, time.Second+time.Hour)

	// A long idle period refills the bucket up to Burst, not beyond.
	h.clk.Step(30 * time.Second)
	for range 3 {
		next = h.request()
	}
	h.wantRuns(0, 0, 0, time.Second, 31*time.Second, 31*time.Second, 31*time.Second)
	next = h.request()
	h.wantNext(next, 32*time.Second)
}

func TestMinIntervalThrottling(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.start()

	next := h.request()
	h.wantRuns(0)
	h.wantNext(next, time.Minute)

	// Requests within MinInterval are held back and coalesce into one run.
	h.clk.Step(100 * time.Millisecond)
	next = h.request()
	h.wantNext(next, time.Second)
	h.stepBy(500*time.Millisecond, next)
	next = h.request()
	h.wantNext(next, time.Second)
	h.wantRuns(0)

	next = h.stepTo(next)
	h.wantRuns(0, time.Second)
	h.wantNext(next, time.Second+time.Minute)
}

func TestMinIntervalCountsFromEndOfRun(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	// The first run takes 5s of fake time.
	h.hook = func(n int) error {
		if n == 1 {
			h.clk.Step(5 * time.Second)
		}
		return nil
	}
	h.start()
	next := h.request()
	h.wantRuns(0)
	h.wantNext(next, 5*time.Second+time.Minute)
	next = h.request()
	h.wantNext(next, 6*time.Second)
}

func TestMaxIntervalPeriodicRun(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: 10 * time.Second})
	next := h.start()
	h.wantNext(next, 10*time.Second)

	next = h.stepTo(next)
	h.wantRuns(10 * time.Second)
	h.wantNext(next, 20*time.Second)

	// A requested run pushes the periodic one back to MaxInterval after it.
	h.clk.Step(3 * time.Second)
	next = h.request()
	h.wantRuns(10*time.Second, 13*time.Second)
	h.wantNext(next, 23*time.Second)

	next = h.stepTo(next)
	h.wantRuns(10*time.Second, 13*time.Second, 23*time.Second)
	h.wantNext(next, 33*time.Second)
}

func TestNoPeriodicRunWhenMaxIntervalZero(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second})
	next := h.start()
	if !next.IsZero() {
		t.Fatalf("run scheduled at t0+%v with MaxInterval 0", next.Sub(t0))
	}
	next = h.request()
	h.wantRuns(0)
	if !next.IsZero() {
		t.Fatalf("run scheduled at t0+%v after the requested run", next.Sub(t0))
	}
}

func TestZeroMinIntervalRunsImmediately(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MaxInterval: time.Minute})
	h.start()
	for range 5 {
		h.request()
	}
	h.wantRuns(0, 0, 0, 0, 0)
}

func TestRequestsDuringRunCoalesce(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute, Burst: 2})
	started := make(chan struct{})
	release := make(chan struct{})
	h.hook = func(n int) error {
		if n == 1 {
			started <- struct{}{}
			<-release
		}
		return nil
	}
	h.start()

	h.r.Request()
	<-started
	// Requests from other goroutines while Fn runs.
	for range 5 {
		h.r.Request()
	}
	close(release)
	next := h.waitIdle()
	// Exactly one follow-up run (Burst 2 lets it start at once).
	h.wantRuns(0, 0)
	h.wantNext(next, time.Minute)
}

func TestRequestFromInsideFnRunsAgain(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.hook = func(n int) error {
		if n == 1 {
			h.r.Request()
			h.r.Request()
		}
		return nil
	}
	h.start()
	next := h.request()
	h.wantRuns(0)
	h.wantNext(next, time.Second)
	next = h.stepTo(next)
	h.wantRuns(0, time.Second)
	h.wantNext(next, time.Second+time.Minute)
}

func TestRequestBeforeRun(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.r.Request()
	h.r.Request()
	next := h.start()
	h.wantRuns(0)
	h.wantNext(next, time.Minute)
}

func TestRetryAfterEarlierThanScheduled(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.hook = func(n int) error {
		if n == 1 {
			h.r.RetryAfter(5 * time.Second)
			return errors.New("boom")
		}
		return nil
	}
	h.start()
	next := h.request()
	h.wantRuns(0)
	h.wantNext(next, 5*time.Second)

	next = h.stepTo(next)
	h.wantRuns(0, 5*time.Second)
	// The successful run cleared the retry.
	h.wantNext(next, 5*time.Second+time.Minute)
}

func TestRetryAfterLaterThanScheduled(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: 10 * time.Second})
	h.start()
	next := h.request()
	h.wantNext(next, 10*time.Second)

	h.r.RetryAfter(25 * time.Second)
	next = h.waitIdle()
	// The periodic run comes first and satisfies the retry...
	h.wantNext(next, 10*time.Second)
	next = h.stepTo(next)
	h.wantRuns(0, 10*time.Second)
	// ...so nothing happens at t0+25s beyond the normal period.
	h.wantNext(next, 20*time.Second)
	next = h.stepTo(next)
	h.wantNext(next, 30*time.Second)
	h.wantRuns(0, 10*time.Second, 20*time.Second)
}

func TestRetryAfterEarliestWins(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.start()
	h.r.RetryAfter(20 * time.Second)
	next := h.waitIdle()
	h.wantNext(next, 20*time.Second)
	h.r.RetryAfter(7 * time.Second)
	next = h.waitIdle()
	h.wantNext(next, 7*time.Second)
	h.r.RetryAfter(30 * time.Second)
	next = h.waitIdle()
	h.wantNext(next, 7*time.Second)
	next = h.stepTo(next)
	h.wantRuns(7 * time.Second)
	h.wantNext(next, 7*time.Second+time.Minute)
}

func TestRetryAfterIsThrottled(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: 2 * time.Second, MaxInterval: time.Minute})
	h.start()
	h.request()
	h.r.RetryAfter(100 * time.Millisecond)
	next := h.waitIdle()
	h.wantNext(next, 2*time.Second)
	h.stepTo(next)
	h.wantRuns(0, 2*time.Second)
}

func TestAutomaticRetryWithBackoff(t *testing.T) {
	fail := 3
	h := newHarness(t, Config{
		Name: "t", MinInterval: time.Second, MaxInterval: time.Hour,
		Retry: &Backoff{Initial: 2 * time.Second, Max: 5 * time.Second},
	})
	h.hook = func(n int) error {
		if n <= fail {
			return errors.New("boom")
		}
		return nil
	}
	h.start()
	next := h.request()
	h.wantNext(next, 2*time.Second) // 1st failure: 2s
	next = h.stepTo(next)
	h.wantNext(next, 6*time.Second) // 2nd failure: 4s
	next = h.stepTo(next)
	h.wantNext(next, 11*time.Second) // 3rd failure: capped at 5s
	next = h.stepTo(next)
	h.wantRuns(0, 2*time.Second, 6*time.Second, 11*time.Second)
	h.wantNext(next, 11*time.Second+time.Hour)

	// Success reset the backoff: the next failure waits Initial again.
	fail = 5
	h.clk.Step(time.Minute)
	next = h.request() // run 5 fails
	h.wantRuns(0, 2*time.Second, 6*time.Second, 11*time.Second, 71*time.Second)
	h.wantNext(next, 73*time.Second)
}

func TestCancelStops(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: 10 * time.Second})
	h.start()
	h.request()
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
		h.done <- err // for the cleanup
	case <-time.After(settleTimeout):
		t.Fatal("Run did not return after cancel")
	}
	// Nothing runs any more, not even the periodic run.
	h.r.Request()
	h.clk.Step(time.Hour)
	h.wantRuns(0)
}

func TestCancelDuringRunSkipsPendingWork(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MaxInterval: time.Minute})
	h.hook = func(n int) error {
		h.r.Request() // would run again at once (MinInterval 0)
		h.cancel()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.r.Request()
	if err := h.r.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	h.wantRuns(0)
}

func TestRunTwice(t *testing.T) {
	h := newHarness(t, Config{Name: "t", MinInterval: time.Second, MaxInterval: time.Minute})
	h.start()
	if err := h.r.Run(context.Background()); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run returned %v, want ErrAlreadyRunning", err)
	}
}

// TestRealClock checks the defaults work with the real clock; it waits for
// an event, never for a duration.
func TestRealClock(t *testing.T) {
	ran := make(chan struct{}, 10)
	r, err := New(Config{Name: "real", Fn: func() error { ran <- struct{}{}; return nil }, MaxInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	r.Request()
	select {
	case <-ran:
	case <-time.After(settleTimeout):
		t.Fatal("requested run did not happen")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLimiter(t *testing.T) {
	l := limiter{interval: time.Second, burst: 2}
	if !l.availableAt().IsZero() {
		t.Fatalf("fresh limiter not available")
	}
	l.take(t0)
	if got := l.availableAt(); got.After(t0) {
		t.Fatalf("second token available at t0+%v", got.Sub(t0))
	}
	l.take(t0)
	if got := l.availableAt().Sub(t0); got != time.Second {
		t.Fatalf("third token at t0+%v, want t0+1s", got)
	}
	// Unlimited.
	u := limiter{interval: 0, burst: 1}
	for range 10 {
		u.take(t0)
	}
	if !u.availableAt().IsZero() {
		t.Fatalf("unlimited limiter throttled")
	}
}
