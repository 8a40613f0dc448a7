package ipset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Interface is the kernel boundary for ip sets of one network namespace.
// Implementations are not safe for concurrent use.
type Interface interface {
	// Save returns `ipset save` output: every set in the namespace.
	Save(ctx context.Context) ([]byte, error)
	// Restore runs `ipset restore -exist` on data. Restore is not atomic:
	// the commands before a failing line stay applied. On failure the
	// error is a *RestoreError.
	Restore(ctx context.Context, data []byte) error
}

// RestoreError is a failed `ipset restore`.
type RestoreError struct {
	// Line is the 1-based batch line ipset blamed, 0 if unknown.
	Line   int
	Stderr string
	Err    error
}

func (e *RestoreError) Error() string {
	var b strings.Builder
	b.WriteString("ipset restore failed")
	if e.Line > 0 {
		fmt.Fprintf(&b, " at line %d", e.Line)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	if e.Stderr != "" {
		b.WriteString(": " + strings.ReplaceAll(e.Stderr, "\n", "; "))
	}
	return b.String()
}

func (e *RestoreError) Unwrap() error { return e.Err }

// Config configures a Runner.
type Config struct {
	// Path of the ipset binary; "" looks it up in PATH.
	Path string
	// Timeout bounds each run on top of the caller's context; default 2m.
	Timeout time.Duration
}

// Runner implements Interface with the ipset binary.
type Runner struct {
	path    string
	timeout time.Duration
	version string
}

var _ Interface = (*Runner)(nil)

// MinVersion is the oldest ipset tool kpr accepts (hash:ip,port,net and
// bitmap:port as used here appeared in 6.x, as kube-proxy requires).
const MinVersion = 6

var versionRe = regexp.MustCompile(`v(\d+)\.(\d+)`)

// NewRunner finds the ipset binary and checks its version (which touches
// no kernel state).
func NewRunner(cfg Config) (*Runner, error) {
	path := cfg.Path
	if path == "" {
		p, err := exec.LookPath("ipset")
		if err != nil {
			return nil, errors.New("the ipvs mode needs the ipset tool: install the ipset package (apt-get install ipset / dnf install ipset)")
		}
		path = p
	}
	r := &Runner{path: path, timeout: cfg.Timeout}
	if r.timeout <= 0 {
		r.timeout = 2 * time.Minute
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %v: %s", path, err, bytes.TrimSpace(out))
	}
	m := versionRe.FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("cannot read the ipset version from %q", bytes.TrimSpace(out))
	}
	if major, _ := strconv.Atoi(m[1]); major < MinVersion {
		return nil, fmt.Errorf("ipset %s.%s is too old: kpr needs %d.0 or newer", m[1], m[2], MinVersion)
	}
	r.version = m[1] + "." + m[2]
	return r, nil
}

// Version is the tool's version ("7.17").
func (r *Runner) Version() string { return r.version }

func (r *Runner) run(ctx context.Context, stdin []byte, args ...string) ([]byte, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	return stdout.Bytes(), stderr.Bytes(), err
}

func (r *Runner) Save(ctx context.Context) ([]byte, error) {
	out, stderr, err := r.run(ctx, nil, "save")
	if err != nil {
		return nil, fmt.Errorf("ipset save: %v: %s", err, bytes.TrimSpace(stderr))
	}
	return out, nil
}

var lineRe = regexp.MustCompile(`Error in line (\d+)`)

func (r *Runner) Restore(ctx context.Context, data []byte) error {
	_, stderr, err := r.run(ctx, data, "restore", "-exist")
	if err == nil {
		return nil
	}
	re := &RestoreError{Stderr: string(bytes.TrimSpace(stderr)), Err: err}
	if m := lineRe.FindStringSubmatch(re.Stderr); m != nil {
		re.Line, _ = strconv.Atoi(m[1])
	}
	return re
}
