package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kpr-proxy/kpr/e2e/bench/shimlog"
)

// ShimEntry is one iptables-restore run as the restore shim logged it.
// Running entries mark a restore's start; the finished one follows.
type ShimEntry = shimlog.Entry

// ParseShimLog parses the shim's JSON lines and returns the finished
// restores. A torn last line (the proxy killed mid-write) is skipped; any
// other bad line is an error.
func ParseShimLog(b []byte) ([]ShimEntry, error) {
	all, err := parseShimLogAll(b)
	var out []ShimEntry
	for _, e := range all {
		if !e.Running {
			out = append(out, e)
		}
	}
	return out, err
}

// runningRestores are started entries with no finished twin (same name and
// start time).
func runningRestores(all []ShimEntry) []ShimEntry {
	done := map[[2]any]bool{}
	for _, e := range all {
		if !e.Running {
			done[[2]any{e.Name, e.Start}] = true
		}
	}
	var out []ShimEntry
	for _, e := range all {
		if e.Running && !done[[2]any{e.Name, e.Start}] {
			out = append(out, e)
		}
	}
	return out
}

func parseShimLogAll(b []byte) ([]ShimEntry, error) {
	var out []ShimEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines := 0
	var pending error
	for sc.Scan() {
		lines++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if pending != nil {
			return nil, pending
		}
		var e ShimEntry
		if err := json.Unmarshal(line, &e); err != nil {
			pending = fmt.Errorf("shim log line %d: %w", lines, err)
			continue
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// ReadShimLog reads and parses a shim log (missing file: no entries).
func ReadShimLog(path string) ([]ShimEntry, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseShimLog(b)
}

// BuildShim compiles the restore shim (./bench/restoreshim of the e2e
// module) into dir and returns its path.
func BuildShim(ctx context.Context, moduleDir, dir string) (string, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			return "", fmt.Errorf("building the restore shim: no go toolchain found: %w", err)
		}
	}
	out := filepath.Join(dir, "kpr-bench-restore-shim")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./bench/restoreshim")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the restore shim: %v: %s", err, bytes.TrimSpace(b))
	}
	return out, nil
}

// ShimDir is a directory to put first on a proxy's PATH: iptables,
// iptables-save (and ip6tables ones) are the chosen backend's, and every
// restore name a proxy may call (iptables-restore, iptables-<backend>-restore
// and the ip6tables ones) is the shim, which runs the backend's real
// iptables-restore.
type ShimDir struct {
	Dir     string
	Backend string
	// RealRestoreV4/V6 are the backend's real restore binaries.
	RealRestoreV4, RealRestoreV6 string
	// Save is the backend's iptables-save (for reading the kernel).
	Save, Save6 string
	// Cmd is the backend's iptables (for flushing).
	Cmd, Cmd6 string
}

// NewShimDir creates dir for backend ("legacy" or "nft").
func NewShimDir(dir, shim, backend string) (*ShimDir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	d := &ShimDir{Dir: dir, Backend: backend}
	look := func(name string) (string, error) {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s not installed (apt-get install iptables): %w", name, err)
		}
		return p, nil
	}
	var err error
	for _, x := range []struct {
		dst  *string
		name string
	}{
		{&d.Cmd, "iptables-" + backend}, {&d.Cmd6, "ip6tables-" + backend},
		{&d.Save, "iptables-" + backend + "-save"}, {&d.Save6, "ip6tables-" + backend + "-save"},
		{&d.RealRestoreV4, "iptables-" + backend + "-restore"}, {&d.RealRestoreV6, "ip6tables-" + backend + "-restore"},
	} {
		if *x.dst, err = look(x.name); err != nil {
			return nil, err
		}
	}
	links := map[string]string{
		"iptables": d.Cmd, "ip6tables": d.Cmd6,
		"iptables-save": d.Save, "ip6tables-save": d.Save6,
		"iptables-restore": shim, "ip6tables-restore": shim,
		"iptables-" + backend + "-restore": shim, "ip6tables-" + backend + "-restore": shim,
	}
	for name, target := range links {
		link := filepath.Join(dir, name)
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Env is the environment for a proxy whose restores are logged to logPath.
func (d *ShimDir) Env(logPath string) []string {
	return []string{
		"PATH=" + d.Dir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"KPR_BENCH_SHIM_LOG=" + logPath,
		"KPR_BENCH_SHIM_REAL_V4=" + d.RealRestoreV4,
		"KPR_BENCH_SHIM_REAL_V6=" + d.RealRestoreV6,
	}
}

// RestoreStats summarises the restores of one phase for one family.
type RestoreStats struct {
	Count      int   `json:"count"`
	Bytes      int   `json:"bytes"`
	Lines      int   `json:"lines"`
	MaxBytes   int   `json:"max_bytes"`
	MaxLines   int   `json:"max_lines"`
	Failures   int   `json:"failures"`
	Tests      int   `json:"tests"`
	DurationMs int64 `json:"duration_ms"`
}

// SummarizeRestores adds up the entries of one family (v6 or not) whose
// start lies in [from, to); --test runs are counted apart.
func SummarizeRestores(entries []ShimEntry, v6 bool, from, to time.Time) RestoreStats {
	var s RestoreStats
	for _, e := range entries {
		if e.V6 != v6 || e.StartTime().Before(from) || !e.StartTime().Before(to) {
			continue
		}
		if e.IsTest() {
			s.Tests++
			continue
		}
		s.Count++
		s.Bytes += e.Bytes
		s.Lines += e.Lines
		s.MaxBytes = max(s.MaxBytes, e.Bytes)
		s.MaxLines = max(s.MaxLines, e.Lines)
		s.DurationMs += e.Duration().Milliseconds()
		if e.Exit != 0 {
			s.Failures++
		}
	}
	return s
}

// describeShimLog is a short human summary of the restores in a shim log
// (for progress lines), including ones still running.
func describeShimLog(path string, since time.Time) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no restores"
	}
	all, _ := parseShimLogAll(b)
	var done []ShimEntry
	for _, e := range all {
		if !e.Running {
			done = append(done, e)
		}
	}
	s := describeEntries(done, since)
	for _, e := range runningRestores(all) {
		fam := "v4"
		if e.V6 {
			fam = "v6"
		}
		s += fmt.Sprintf("; %s restore of %d lines/%s running for %s", fam, e.Lines, humanBytes(int64(e.Bytes)), time.Since(e.StartTime()).Round(time.Second))
	}
	return strings.TrimPrefix(s, "no restores; ")
}

// describeEntries is a short human summary of finished restores.
func describeEntries(entries []ShimEntry, since time.Time) string {
	var parts []string
	for _, e := range entries {
		if e.StartTime().Before(since) {
			continue
		}
		fam := "v4"
		if e.V6 {
			fam = "v6"
		}
		parts = append(parts, fmt.Sprintf("%s %d lines/%s in %s", fam, e.Lines, humanBytes(int64(e.Bytes)), e.Duration().Round(time.Millisecond)))
	}
	if len(parts) == 0 {
		return "no restores"
	}
	return strings.Join(parts, "; ")
}
