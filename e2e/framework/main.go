// Package framework runs a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager) and a cluster made of network
// namespaces (nodes, pods, an outside client, a router) for kpr's end-to-end
// tests. See e2e/README.md for the address plan and how to write a scenario.
//
// Everything it creates lives in network namespaces named NSPrefix+pid+...,
// and is removed on success, failure, panic (t.Cleanup), SIGINT/SIGTERM (Main's
// handler) and, for a run killed outright, by the next run's sweep.
package framework

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Main is the TestMain of every e2e test package:
//
//	func TestMain(m *testing.M) { framework.Main(m) }
//
// It removes stale namespaces of crashed runs, installs a SIGINT/SIGTERM
// handler that removes this run's namespaces and processes, arms a sweep just
// before the -test.timeout panic, runs the tests and sweeps again.
func Main(m *testing.M) {
	if !flag.Parsed() {
		flag.Parse()
	}
	if os.Geteuid() == 0 {
		if n, err := SweepStale(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: sweeping stale namespaces: %v\n", err)
		} else if n > 0 {
			fmt.Fprintf(os.Stderr, "e2e: removed %d stale namespace(s) of crashed runs\n", n)
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\ne2e: got %v, removing this run's namespaces and processes\n", s)
		sweepOwn()
		os.Exit(130)
	}()

	// go test's timeout panics without running cleanups; sweep just before.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 10*time.Second {
			time.AfterFunc(d-5*time.Second, func() {
				fmt.Fprintln(os.Stderr, "e2e: test timeout is about to fire; removing this run's namespaces and processes")
				sweepOwn()
			})
		}
	}

	code := m.Run()
	sweepOwn()
	os.Exit(code)
}

// SweepStale removes harness namespaces (and kills their processes) whose
// owning test process no longer exists. Namespaces of live runs, and any
// namespace without NSPrefix, are left alone. It returns how many it removed.
func SweepStale() (int, error) {
	names, err := listNetNS()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		pid, ok := ownerPid(name)
		if !ok || processAlive(pid) {
			continue
		}
		(&NetNS{Name: name}).destroy()
		n++
	}
	return n, nil
}

// sweepOwn removes every namespace this process created. Each harness process
// runs inside one of them, so this also ends all of them. A test may still be
// running (the signal handler runs beside it) and create more, so it sweeps
// until a pass finds nothing.
func sweepOwn() {
	prefix := fmt.Sprintf("%s%d-", NSPrefix, os.Getpid())
	for pass := 0; pass < 10; pass++ {
		names, err := listNetNS()
		if err != nil {
			return
		}
		found := 0
		for _, name := range names {
			if strings.HasPrefix(name, prefix) {
				(&NetNS{Name: name}).destroy()
				found++
			}
		}
		if found == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
