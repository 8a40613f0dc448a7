package framework

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// standaloneRun runs runStandalone with a fake signal channel and sweeper and
// returns the exit code, the output and how often the sweeper ran.
type standaloneRun struct {
	sigs   chan os.Signal
	out    bytes.Buffer
	mu     sync.Mutex
	sweeps int
}

func newStandaloneRun() *standaloneRun { return &standaloneRun{sigs: make(chan os.Signal, 2)} }

func (r *standaloneRun) run(grace time.Duration, fn func(ctx context.Context, t testing.TB)) int {
	return runStandalone(StandaloneConfig{Name: "demo-test", Out: &r.out, InterruptGrace: grace}, r.sigs, func() {
		r.mu.Lock()
		r.sweeps++
		r.mu.Unlock()
	}, fn)
}

func TestStandaloneCleanupsRunLIFOAfterSuccess(t *testing.T) {
	r := newStandaloneRun()
	var order []string
	code := r.run(0, func(ctx context.Context, tb testing.TB) {
		tb.Cleanup(func() { order = append(order, "first") })
		tb.Cleanup(func() {
			order = append(order, "second")
			tb.Cleanup(func() { order = append(order, "registered-by-cleanup") })
		})
		if tb.Name() != "demo-test" {
			tb.Errorf("Name() = %q", tb.Name())
		}
	})
	if code != StandaloneOK {
		t.Fatalf("exit code %d, want %d; output:\n%s", code, StandaloneOK, r.out.String())
	}
	if got := strings.Join(order, ","); got != "second,registered-by-cleanup,first" {
		t.Fatalf("cleanup order %s", got)
	}
	if r.sweeps != 1 {
		t.Fatalf("sweeper ran %d times, want 1 (the safety net)", r.sweeps)
	}
}

func TestStandaloneFatalStopsFnAndRunsCleanups(t *testing.T) {
	r := newStandaloneRun()
	cleaned, after := false, false
	code := r.run(0, func(ctx context.Context, tb testing.TB) {
		tb.Cleanup(func() { cleaned = true })
		tb.Fatalf("apiserver did not come up: %s", "boom")
		after = true
	})
	if code != StandaloneFailed {
		t.Fatalf("exit code %d, want %d", code, StandaloneFailed)
	}
	if after {
		t.Fatal("code after Fatalf ran")
	}
	if !cleaned {
		t.Fatal("cleanup did not run after Fatalf")
	}
	if !strings.Contains(r.out.String(), "apiserver did not come up: boom") {
		t.Fatalf("failure message missing from output:\n%s", r.out.String())
	}
}

func TestStandalonePanicIsAFailureAndCleansUp(t *testing.T) {
	r := newStandaloneRun()
	cleaned := false
	code := r.run(0, func(ctx context.Context, tb testing.TB) {
		tb.Cleanup(func() { cleaned = true })
		tb.Cleanup(func() { panic("cleanup panics too") })
		panic("demo bug")
	})
	if code != StandaloneFailed || !cleaned {
		t.Fatalf("exit code %d (want %d), cleaned %v; output:\n%s", code, StandaloneFailed, cleaned, r.out.String())
	}
	for _, want := range []string{"panic: demo bug", "panic in cleanup: cleanup panics too"} {
		if !strings.Contains(r.out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, r.out.String())
		}
	}
}

func TestStandaloneSkipWithoutSignalIsAFailure(t *testing.T) {
	r := newStandaloneRun()
	code := r.run(0, func(ctx context.Context, tb testing.TB) { tb.Skip("needs root") })
	if code != StandaloneFailed {
		t.Fatalf("exit code %d, want %d", code, StandaloneFailed)
	}
	if !strings.Contains(r.out.String(), "needs root") {
		t.Fatalf("skip reason missing:\n%s", r.out.String())
	}
}

func TestStandaloneInterruptCancelsContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		skip bool // fn calls SkipNow on cancellation (interrupted mid-setup)
		want int
	}{
		{"fn returns: clean exit", false, StandaloneOK},
		{"fn skips: interrupted", true, StandaloneInterrupted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newStandaloneRun()
			cleaned := false
			code := r.run(time.Minute, func(ctx context.Context, tb testing.TB) {
				tb.Cleanup(func() { cleaned = true })
				if tb.Context() != ctx {
					tb.Error("t.Context() is not fn's context")
				}
				r.sigs <- syscall.SIGINT
				<-ctx.Done()
				if tc.skip {
					tb.SkipNow()
				}
			})
			if code != tc.want || !cleaned {
				t.Fatalf("exit code %d (want %d), cleaned %v; output:\n%s", code, tc.want, cleaned, r.out.String())
			}
		})
	}
}

func TestStandaloneStuckFnIsSwept(t *testing.T) {
	r := newStandaloneRun()
	release := make(chan struct{})
	defer close(release)
	code := r.run(50*time.Millisecond, func(ctx context.Context, tb testing.TB) {
		r.sigs <- syscall.SIGTERM
		<-release // ignores its context, like a non-cancellable wait
	})
	if code != StandaloneInterrupted {
		t.Fatalf("exit code %d, want %d", code, StandaloneInterrupted)
	}
	if r.sweeps != 1 || !strings.Contains(r.out.String(), "still busy") {
		t.Fatalf("sweeps %d; output:\n%s", r.sweeps, r.out.String())
	}
}

func TestStandaloneSecondSignalSweepsAtOnce(t *testing.T) {
	r := newStandaloneRun()
	release := make(chan struct{})
	defer close(release)
	code := r.run(time.Hour, func(ctx context.Context, tb testing.TB) {
		r.sigs <- syscall.SIGINT
		r.sigs <- syscall.SIGINT
		<-release
	})
	if code != StandaloneInterrupted || r.sweeps != 1 {
		t.Fatalf("exit code %d (want %d), sweeps %d; output:\n%s", code, StandaloneInterrupted, r.sweeps, r.out.String())
	}
}

func TestStandaloneLogAndErrorsGoWhereConfigured(t *testing.T) {
	var out, log bytes.Buffer
	sigs := make(chan os.Signal)
	code := runStandalone(StandaloneConfig{Name: "demo-test", Out: &out, Log: &log}, sigs, func() {}, func(ctx context.Context, tb testing.TB) {
		tb.Logf("last 40 lines of %s", "etcd")
		tb.Error("proxy exited")
	})
	if code != StandaloneFailed {
		t.Fatalf("exit code %d, want %d", code, StandaloneFailed)
	}
	if strings.Contains(out.String(), "last 40 lines") || !strings.Contains(out.String(), "error: proxy exited") {
		t.Fatalf("Out got %q: want the error and not the log line", out.String())
	}
	if !strings.Contains(log.String(), "last 40 lines of etcd") || !strings.Contains(log.String(), "error: proxy exited") {
		t.Fatalf("Log got %q: want the log line and a copy of the error", log.String())
	}
}
