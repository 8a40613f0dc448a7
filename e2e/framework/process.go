package framework

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running program the harness started inside a namespace,
// with its output in a log file.
type Process struct {
	// Name identifies the process in logs ("kube-apiserver", "proxy-node1").
	Name string
	// LogPath is the file holding its stdout and stderr.
	LogPath string
	// NS is the namespace it runs in.
	NS *NetNS

	argv []string
	env  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	starts  int
}

// ProcessSpec describes a process to start.
type ProcessSpec struct {
	Name string
	NS   *NetNS
	Argv []string
	// Env is added to the harness's environment.
	Env []string
	// LogDir is where <Name>.log goes.
	LogDir string
}

func newProcess(spec ProcessSpec) *Process {
	return &Process{
		Name:    spec.Name,
		LogPath: filepath.Join(spec.LogDir, spec.Name+".log"),
		NS:      spec.NS,
		argv:    spec.Argv,
		env:     spec.Env,
	}
}

// startProcess starts a new process.
func startProcess(spec ProcessSpec) (*Process, error) {
	p := newProcess(spec)
	return p, p.Start()
}

// Start (re)starts the process. Its log is appended to, with a marker line
// per start, so a restart keeps the earlier output.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%s is already running (pid %d)", p.Name, p.cmd.Process.Pid)
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "==== e2e: start #%d at %s: %s\n", p.starts, time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := p.NS.Command(p.argv...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), p.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a terminal's Ctrl-C reaches only the test
		// binary, whose handler then stops everything in order.
		Setpgid: true,
		// If the test binary dies outright, the kernel kills this too.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.waitErr = cmd, done, nil
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *Process) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Pid is the process id of the current run, 0 if never started.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process is alive.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

// Exited returns a channel closed when the current run ends, and the exit
// error once it has.
func (p *Process) Exited() (<-chan struct{}, func() error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	done := p.done
	return done, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waitErr
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exitedLocked() {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It is idempotent and
// returns nil when the process is (now) stopped.
func (p *Process) Stop(grace time.Duration) error {
	p.mu.Lock()
	if p.cmd == nil || p.exitedLocked() {
		p.mu.Unlock()
		return nil
	}
	pid, done := p.cmd.Process.Pid, p.done
	p.mu.Unlock()
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, pid)
	}
}

// Restart stops and starts the process again.
func (p *Process) Restart(grace time.Duration) error {
	if err := p.Stop(grace); err != nil {
		return err
	}
	return p.Start()
}

// Tail returns the last n lines of the log.
func (p *Process) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// killPid kills one process (not its group): used for stray processes found
// in a namespace being removed.
func killPid(pid int) error {
	err := syscall.Kill(pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}
