package framework

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/build"
)

// Standalone programs (the demo) drive the same cluster code as the tests,
// whose entry points take a testing.TB. RunStandalone supplies one outside
// `go test`, so a program is a plain binary: no "=== RUN" noise, and Ctrl-C
// goes straight to it, which tears the cluster down in order (pods, proxies,
// control plane, namespaces) instead of only sweeping namespaces as Main's
// handler has to.

// StandaloneConfig configures RunStandalone.
type StandaloneConfig struct {
	// Name is what TB.Name() reports (names nothing on disk).
	Name string
	// Out receives errors, skip reasons and interrupt notices. Default
	// os.Stderr.
	Out io.Writer
	// Log receives t.Log output (e.g. the harness's log tails on failure)
	// and a copy of every error. Default: Out.
	Log io.Writer
	// InterruptGrace is how long fn may take to return after the first
	// SIGINT/SIGTERM (its context is cancelled then) before this run's
	// namespaces and processes are swept without waiting for it. Default
	// 20s. A second signal sweeps at once.
	InterruptGrace time.Duration
}

// Exit codes RunStandalone returns.
const (
	StandaloneOK          = 0   // fn returned normally (also after an interrupt)
	StandaloneFailed      = 1   // fn failed, panicked, or skipped (could not run)
	StandaloneInterrupted = 130 // a signal stopped fn before it returned
)

// RunStandalone runs fn like a test function outside `go test` and returns
// an exit code for os.Exit. fn's context is cancelled on SIGINT or SIGTERM;
// fn should then return (or call t.SkipNow, which also counts as
// interrupted). t.Fatal/FailNow/Skip end fn's goroutine as in a test; t's
// cleanups then run last-registered first, and this process's namespaces are
// swept afterwards whatever happened. Like Main, it first removes namespaces
// left by crashed runs.
func RunStandalone(cfg StandaloneConfig, fn func(ctx context.Context, t testing.TB)) int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if os.Geteuid() == 0 {
		if n, err := SweepStale(); err != nil {
			fmt.Fprintf(outOrStderr(cfg.Out), "%s: sweeping stale namespaces: %v\n", cfg.Name, err)
		} else if n > 0 {
			fmt.Fprintf(outOrStderr(cfg.Out), "%s: removed %d stale namespace(s) of crashed runs\n", cfg.Name, n)
		}
	}
	return runStandalone(cfg, sigs, sweepOwn, fn)
}

func outOrStderr(w io.Writer) io.Writer {
	if w == nil {
		return os.Stderr
	}
	return w
}

// runStandalone is RunStandalone with the signal source and the sweeper
// injected, so its control flow is testable without signalling the test
// binary.
func runStandalone(cfg StandaloneConfig, sigs <-chan os.Signal, sweep func(), fn func(ctx context.Context, t testing.TB)) int {
	cfg.Out = outOrStderr(cfg.Out)
	if cfg.InterruptGrace <= 0 {
		cfg.InterruptGrace = 20 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if cfg.Log == nil {
		cfg.Log = cfg.Out
	}
	tb := &standaloneTB{name: cfg.Name, out: cfg.Out, log: cfg.Log, ctx: ctx}

	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			// recover is nil under runtime.Goexit (FailNow, SkipNow).
			if r := recover(); r != nil {
				tb.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		fn(ctx, tb)
	}()

	interrupted := false
	select {
	case <-done:
	case s := <-sigs:
		interrupted = true
		cancel()
		fmt.Fprintf(cfg.Out, "\n%s: got %v, tearing everything down…\n", cfg.Name, s)
		select {
		case <-done:
		case <-sigs:
			fmt.Fprintf(cfg.Out, "%s: second signal: killing this run's processes and removing its namespaces\n", cfg.Name)
			sweep()
			return StandaloneInterrupted
		case <-time.After(cfg.InterruptGrace):
			fmt.Fprintf(cfg.Out, "%s: still busy after %s: killing this run's processes and removing its namespaces\n", cfg.Name, cfg.InterruptGrace)
			sweep()
			return StandaloneInterrupted
		}
	}

	cleaned := make(chan struct{})
	go func() {
		defer close(cleaned)
		tb.runCleanups()
	}()
	select {
	case <-cleaned:
	case s := <-sigs:
		fmt.Fprintf(cfg.Out, "\n%s: got %v during teardown: killing this run's processes and removing its namespaces\n", cfg.Name, s)
		interrupted = true
	}
	// Safety net, as in Main: whatever a cleanup missed (or the sweep above
	// cut short) goes now.
	sweep()

	switch {
	case tb.Failed():
		return StandaloneFailed
	case interrupted && (tb.Skipped() || !isClosed(cleaned)):
		return StandaloneInterrupted
	case tb.Skipped() && !interrupted:
		return StandaloneFailed
	}
	return StandaloneOK
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// standaloneTB implements testing.TB for RunStandalone. The embedded nil
// interface only supplies TB's unexported method (it cannot be implemented
// outside package testing); every exported method is defined below, so the
// nil is never called.
type standaloneTB struct {
	testing.TB

	name     string
	out, log io.Writer
	ctx      context.Context

	mu       sync.Mutex
	failed   bool
	skipped  bool
	cleanups []func()
}

var _ testing.TB = (*standaloneTB)(nil)

// print writes to Out (and a copy to Log), or with logOnly to Log alone.
func (t *standaloneTB) print(s string, logOnly bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(s) == 0 || s[len(s)-1] != '\n' {
		s += "\n"
	}
	if !logOnly {
		_, _ = io.WriteString(t.out, s)
	}
	if logOnly || t.log != t.out {
		_, _ = io.WriteString(t.log, s)
	}
}

func (t *standaloneTB) Helper()                    {}
func (t *standaloneTB) Name() string               { return t.name }
func (t *standaloneTB) Context() context.Context   { return t.ctx }
func (t *standaloneTB) Output() io.Writer          { return t.log }
func (t *standaloneTB) Log(args ...any)            { t.print(fmt.Sprintln(args...), true) }
func (t *standaloneTB) Logf(f string, args ...any) { t.print(fmt.Sprintf(f, args...), true) }
func (t *standaloneTB) Attr(key, value string) {
	t.print(fmt.Sprintf("=== ATTR %s %s %s", t.name, key, value), true)
}

func (t *standaloneTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *standaloneTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *standaloneTB) Skipped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.skipped
}

// FailNow ends the calling goroutine, as testing's does; it must be called
// from fn's goroutine.
func (t *standaloneTB) FailNow() { t.Fail(); runtime.Goexit() }

func (t *standaloneTB) Error(args ...any) { t.print("error: "+fmt.Sprintln(args...), false); t.Fail() }
func (t *standaloneTB) Errorf(f string, args ...any) {
	t.print("error: "+fmt.Sprintf(f, args...), false)
	t.Fail()
}
func (t *standaloneTB) Fatal(args ...any)            { t.Error(args...); runtime.Goexit() }
func (t *standaloneTB) Fatalf(f string, args ...any) { t.Errorf(f, args...); runtime.Goexit() }

func (t *standaloneTB) SkipNow() {
	t.mu.Lock()
	t.skipped = true
	t.mu.Unlock()
	runtime.Goexit()
}
func (t *standaloneTB) Skip(args ...any) { t.print(fmt.Sprintln(args...), false); t.SkipNow() }
func (t *standaloneTB) Skipf(f string, args ...any) {
	t.print(fmt.Sprintf(f, args...), false)
	t.SkipNow()
}

func (t *standaloneTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

// runCleanups runs cleanups last-registered first, including any a cleanup
// registers, each shielded from the others' panics.
func (t *standaloneTB) runCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("panic in cleanup: %v\n%s", r, debug.Stack())
				}
			}()
			f()
		}()
	}
}

func (t *standaloneTB) TempDir() string {
	dir, err := os.MkdirTemp("", "kpr-"+t.name+"-")
	if err != nil {
		t.Fatalf("TempDir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// ArtifactDir is TempDir: a standalone run has no -artifacts directory.
func (t *standaloneTB) ArtifactDir() string { return t.TempDir() }

func (t *standaloneTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		t.Fatalf("Setenv: %v", err)
	}
	t.Cleanup(func() {
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	})
}

func (t *standaloneTB) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		t.Fatalf("Chdir: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatalf("Chdir: %v", err)
	}
	t.Cleanup(func() { _ = os.Chdir(old) })
}

// NewRunDir creates a run directory for a standalone program the way Start
// makes its default one, <e2e>/_cache/runs/<time>-<pid>-<suffix>, after
// pruning all but the newest runs as Start does. A program that needs the
// directory before Start (e.g. for its own log) passes it as Options.RunDir.
func NewRunDir(suffix string) (string, error) {
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		return "", err
	}
	runs := filepath.Join(moduleDir, "_cache", "runs")
	pruneRuns(runs, 20)
	dir := filepath.Join(runs, fmt.Sprintf("%s-%d-%s", time.Now().Format("20060102-150405"), os.Getpid(), suffix))
	return dir, os.MkdirAll(dir, 0o755)
}
