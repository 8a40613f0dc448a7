// Command restoreshim stands in for iptables-restore (and ip6tables-restore,
// and the -legacy/-nft suffixed names) on the PATH of a proxy under
// benchmark. It reads its whole stdin, appends one JSON line to the log named
// by $KPR_BENCH_SHIM_LOG (input size in bytes and lines, arguments, start and
// end time, exit code), and runs the real binary named by
// $KPR_BENCH_SHIM_REAL_V4 or $KPR_BENCH_SHIM_REAL_V6 (picked by its own name:
// ip6tables* is IPv6) with the same arguments and that input.
//
// The bench puts it in front of both kpr and upstream kube-proxy, so the
// bytes and lines each sends to the kernel are measured the same way.
//
// The real binary runs as a child, not through exec, so the log can say how
// long the restore took; the child's CPU time is still charged to the proxy
// (a waited-for grandchild adds to the proxy's cutime/cstime).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kpr-proxy/kpr/e2e/bench/shimlog"
)

func main() {
	os.Exit(run())
}

func run() int {
	start := time.Now()
	name := filepath.Base(os.Args[0])
	v6 := strings.HasPrefix(name, "ip6tables")
	realVar := "KPR_BENCH_SHIM_REAL_V4"
	if v6 {
		realVar = "KPR_BENCH_SHIM_REAL_V6"
	}
	real := os.Getenv(realVar)
	if real == "" {
		fmt.Fprintf(os.Stderr, "%s (kpr bench shim): $%s is not set\n", name, realVar)
		return 2
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s (kpr bench shim): reading stdin: %v\n", name, err)
		return 2
	}
	logEntry(shimlog.Entry{Running: true, Name: name, V6: v6, Args: os.Args[1:], Bytes: len(in), Lines: countLines(in), Start: start.UnixNano(), Exit: -1})
	// argv[0] stays the real path: xtables-*-multi picks its personality
	// from the name it was called by.
	cmd := exec.Command(real, os.Args[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// If the proxy kills us (its restore timeout), do not leave the real
	// restore running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	code := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
			if code < 0 {
				code = 128 + 9
			}
		} else {
			fmt.Fprintf(os.Stderr, "%s (kpr bench shim): running %s: %v\n", name, real, err)
			code = 2
		}
	}
	logEntry(shimlog.Entry{
		Name:  name,
		V6:    v6,
		Args:  os.Args[1:],
		Bytes: len(in),
		Lines: countLines(in),
		Start: start.UnixNano(),
		End:   time.Now().UnixNano(),
		Exit:  code,
	})
	return code
}

// countLines counts lines the way `wc -l` would, plus a last line without a
// newline.
func countLines(b []byte) int {
	n := bytes.Count(b, []byte{'\n'})
	if len(b) > 0 && b[len(b)-1] != '\n' {
		n++
	}
	return n
}

func logEntry(e shimlog.Entry) {
	path := os.Getenv("KPR_BENCH_SHIM_LOG")
	if path == "" {
		return
	}
	line, err := json.Marshal(e)
	if err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kpr bench shim: %v\n", err)
		return
	}
	// One write per entry: O_APPEND keeps concurrent entries whole.
	_, _ = f.Write(append(line, '\n'))
	_ = f.Close()
}
