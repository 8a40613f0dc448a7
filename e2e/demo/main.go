// Command demo is `make demo`: it starts the e2e harness's local cluster
// (a real control plane, two nodes, an outside client, all in network
// namespaces), runs kpr (bin/proxy) on every node as its DaemonSet would,
// puts three echo pods behind a LoadBalancer Service, shows ClusterIP,
// NodePort and LoadBalancer traffic answered through kpr's rules, and then
// stays up for poking around until Ctrl-C, which tears everything down.
//
// It is a program rather than a `go test -run` target so its output is only
// the demo's (no test framing) and Ctrl-C reaches it directly; it drives the
// same framework code as the tests through framework.RunStandalone. Run it
// through hack/demo.sh, which installs tools and builds everything first.
//
//	demo [--requests=6] [--hold=true]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

func main() {
	requests := flag.Int("requests", 6, "requests per traffic section")
	hold := flag.Bool("hold", true, "stay up after the show until Ctrl-C (false: tear down at once)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces): run `sudo make demo`")
		os.Exit(1)
	}
	// The run directory (logs, kubeconfigs, certificates) is made here so
	// the harness log, and the process log tails it gets on failure, have a
	// home from the start; the terminal only gets the narrative and errors.
	runDir, err := framework.NewRunDir("demo")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: run directory:", err)
		os.Exit(1)
	}
	harnessLogPath := filepath.Join(runDir, "harness.log")
	harnessLog, err := os.OpenFile(harnessLogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}

	p := &printer{out: os.Stdout}
	start := time.Now()
	code := framework.RunStandalone(framework.StandaloneConfig{Name: "kpr-demo", Out: os.Stderr, Log: harnessLog}, func(ctx context.Context, t testing.TB) {
		p.printf("kpr demo: kpr as the kube-proxy of a local cluster made of network namespaces (nothing touches this machine's own network)\n")
		run(ctx, t, config{Requests: *requests, Hold: *hold, Printer: p, RunDir: runDir, HarnessLog: harnessLog})
	})
	_ = harnessLog.Close()
	switch code {
	case framework.StandaloneOK:
		p.printf("kpr demo finished after %s. Logs: %s\n", round(time.Since(start)), filepath.Join(runDir, "logs"))
	case framework.StandaloneInterrupted:
		p.printf("kpr demo interrupted. Logs: %s\n", filepath.Join(runDir, "logs"))
	default:
		fmt.Fprintf(os.Stderr, "kpr demo FAILED (see the error above); everything was torn down.\n"+
			"Process logs: %s\nHarness log, with the last lines of every process log: %s\n", filepath.Join(runDir, "logs"), harnessLogPath)
	}
	os.Exit(code)
}
