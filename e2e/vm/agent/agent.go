package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kpr-proxy/kpr/e2e/echo"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
)

// agent is the RPC receiver (net/rpc: exported methods with (args, *reply)
// error signatures). Each call runs on its own goroutine.
type agent struct {
	mu      sync.Mutex
	bootLog []string
	procs   map[string]*proc
	conns   map[int]*conn
	nextID  int
	// spawnMu is held while a child is started and registered, so the
	// orphan reaper never reaps a child an exec.Cmd is about to wait for.
	spawnMu sync.Mutex
	mine    map[int]bool
	// logDir holds started processes' logs (agentapi.LogDir in the guest).
	logDir string
}

type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	exit    string
	starts  int
	logPath string
}

type conn struct {
	c net.Conn
	r *bufio.Reader
}

func newAgent() *agent {
	return &agent{procs: map[string]*proc{}, conns: map[int]*conn{}, mine: map[int]bool{}, logDir: agentapi.LogDir}
}

func (a *agent) bootf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf("%s", msg)
	a.mu.Lock()
	a.bootLog = append(a.bootLog, fmt.Sprintf("%s %s", uptime().Round(time.Millisecond), msg))
	a.mu.Unlock()
}

// Ping answers with the kernel release, uptime and the boot log.
func (a *agent) Ping(_ agentapi.Empty, r *agentapi.PingReply) error {
	a.mu.Lock()
	r.BootLog = append([]string(nil), a.bootLog...)
	a.mu.Unlock()
	r.Kernel = kernelRelease()
	r.Uptime = uptime()
	return nil
}

// command builds an exec.Cmd for argv, inside netns when given.
func command(ctx context.Context, netns string, argv, env []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty argv")
	}
	if netns != "" {
		// iproute2's own ip (busybox has an `ip` applet too).
		argv = append([]string{"/bin/ip", "netns", "exec", netns}, argv...)
	}
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// startTracked starts cmd and registers its pid as one the reaper leaves
// to exec.Cmd.Wait.
func (a *agent) startTracked(cmd *exec.Cmd) error {
	a.spawnMu.Lock()
	defer a.spawnMu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	a.mine[cmd.Process.Pid] = true
	return nil
}

func (a *agent) untrack(pid int) {
	a.spawnMu.Lock()
	delete(a.mine, pid)
	a.spawnMu.Unlock()
}

// Exec runs a command to completion.
func (a *agent) Exec(args agentapi.ExecArgs, r *agentapi.ExecReply) error {
	timeout := args.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd, err := command(ctx, args.NetNS, args.Argv, args.Env)
	if err != nil {
		return err
	}
	// Kill the whole process group on timeout, not just the leader.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if args.Stdin != "" {
		cmd.Stdin = strings.NewReader(args.Stdin)
	}
	if err := a.startTracked(cmd); err != nil {
		r.Err, r.ExitCode = err.Error(), -1
		return nil
	}
	err = cmd.Wait()
	a.untrack(cmd.Process.Pid)
	r.Output = out.String()
	r.ExitCode = cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		r.Err = fmt.Sprintf("killed after %s", timeout)
	} else if err != nil && r.ExitCode == 0 {
		r.Err = err.Error()
	}
	return nil
}

// Start starts a named long-running process with its output in
// LogDir/<name>.log (appended to, with a marker per start).
func (a *agent) Start(args agentapi.StartArgs, r *agentapi.StartReply) error {
	if args.Name == "" || strings.ContainsAny(args.Name, "/ ") {
		return fmt.Errorf("bad process name %q", args.Name)
	}
	a.mu.Lock()
	p := a.procs[args.Name]
	if p != nil && p.running() {
		a.mu.Unlock()
		return fmt.Errorf("%s is already running (pid %d)", args.Name, p.cmd.Process.Pid)
	}
	if p == nil {
		p = &proc{logPath: filepath.Join(a.logDir, args.Name+".log")}
		a.procs[args.Name] = p
	}
	a.mu.Unlock()
	if err := os.MkdirAll(a.logDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd, err := command(nil, args.NetNS, args.Argv, args.Env)
	if err != nil {
		f.Close()
		return err
	}
	a.mu.Lock()
	p.starts++
	fmt.Fprintf(f, "==== agent: start #%d at %s: %s\n", p.starts, time.Now().UTC().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	a.mu.Unlock()
	cmd.Stdout, cmd.Stderr = f, f
	if err := a.startTracked(cmd); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	a.mu.Lock()
	p.cmd, p.done, p.exit = cmd, done, ""
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.untrack(cmd.Process.Pid)
		f.Close()
		a.mu.Lock()
		p.exit = "exited: " + cmd.ProcessState.String()
		if err != nil && cmd.ProcessState == nil {
			p.exit = err.Error()
		}
		a.mu.Unlock()
		close(done)
	}()
	r.Pid = cmd.Process.Pid
	return nil
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// status reports on a process, and returns the channel its current run
// closes on exit.
func (a *agent) status(name string) (agentapi.ProcStatus, <-chan struct{}, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.procs[name]
	if p == nil {
		return agentapi.ProcStatus{}, nil, fmt.Errorf("no process named %s", name)
	}
	st := agentapi.ProcStatus{Running: p.running(), Exit: p.exit, LogPath: p.logPath, Starts: p.starts}
	if p.cmd != nil && p.cmd.Process != nil {
		st.Pid = p.cmd.Process.Pid
	}
	return st, p.done, nil
}

// Status reports on a named process.
func (a *agent) Status(args agentapi.ProcArgs, r *agentapi.ProcStatus) error {
	st, _, err := a.status(args.Name)
	*r = st
	return err
}

// Stop sends SIGTERM to the process (as a container runtime does to a
// container's main process), and SIGKILL to its whole process group after
// Grace. The group is not sent SIGTERM: a proxy's iptables or ipset child
// killed mid-run would make its shutdown look like a failure.
func (a *agent) Stop(args agentapi.StopArgs, r *agentapi.ProcStatus) error {
	st, done, err := a.status(args.Name)
	if err != nil {
		return err
	}
	if st.Running {
		grace := args.Grace
		if grace <= 0 {
			grace = 5 * time.Second
		}
		_ = syscall.Kill(st.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(grace):
			_ = syscall.Kill(-st.Pid, syscall.SIGKILL)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", args.Name, st.Pid)
			}
		}
		// Whatever it left running in its group goes too.
		_ = syscall.Kill(-st.Pid, syscall.SIGKILL)
	}
	st, _, err = a.status(args.Name)
	*r = st
	return err
}

// ReadFile returns a file's content.
func (a *agent) ReadFile(args agentapi.FileArgs, r *agentapi.FileReply) error {
	b, err := os.ReadFile(args.Path)
	r.Data = b
	return err
}

// WriteFile writes a file, creating its directory.
func (a *agent) WriteFile(args agentapi.FileArgs, _ *agentapi.Empty) error {
	if err := os.MkdirAll(filepath.Dir(args.Path), 0o755); err != nil {
		return err
	}
	mode := os.FileMode(args.Mode)
	if mode == 0 {
		mode = 0o644
	}
	return os.WriteFile(args.Path, args.Data, mode)
}

// nsDialer dials from inside a named network namespace ("" = the VM's
// own). Only the socket's creation needs the namespace.
type nsDialer struct{ netns string }

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.netns == "" {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := ns.WithNetNSPath(filepath.Join("/run/netns", d.netns), func(ns.NetNS) error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func timeoutCtx(d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		d = 5 * time.Second
	}
	return context.WithTimeout(context.Background(), d)
}

// Query sends one echo query.
func (a *agent) Query(args agentapi.QueryArgs, r *agentapi.QueryReply) error {
	ctx, cancel := timeoutCtx(args.Timeout)
	defer cancel()
	rep, err := echo.Query(ctx, nsDialer{args.NetNS}, args.Proto, args.Addr)
	r.Reply = rep
	return err
}

// QueryMany sends Count queries in sequence; each gets Timeout.
func (a *agent) QueryMany(args agentapi.QueryManyArgs, r *agentapi.QueryManyReply) error {
	if args.Count <= 0 || args.Count > 10000 {
		return fmt.Errorf("count %d out of range 1..10000", args.Count)
	}
	for i := 0; i < args.Count; i++ {
		ctx, cancel := timeoutCtx(args.Timeout)
		rep, err := echo.Query(ctx, nsDialer{args.NetNS}, args.Proto, args.Addr)
		cancel()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		r.Replies = append(r.Replies, rep)
		r.Errors = append(r.Errors, msg)
	}
	return nil
}

// ConnOpen dials a TCP echo server and keeps the connection.
func (a *agent) ConnOpen(args agentapi.ConnOpenArgs, r *agentapi.ConnOpenReply) error {
	ctx, cancel := timeoutCtx(args.Timeout)
	defer cancel()
	c, err := nsDialer{args.NetNS}.DialContext(ctx, "tcp", args.Addr)
	if err != nil {
		return err
	}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		c.Close()
		return fmt.Errorf("reading greeting: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	if err := jsonUnmarshal(line, &r.Hello); err != nil {
		c.Close()
		return err
	}
	a.mu.Lock()
	a.nextID++
	r.ID = a.nextID
	a.conns[r.ID] = &conn{c: c, r: br}
	a.mu.Unlock()
	r.Local = c.LocalAddr().String()
	return nil
}

func (a *agent) conn(id int) (*conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.conns[id]
	if c == nil {
		return nil, fmt.Errorf("no open connection %d", id)
	}
	return c, nil
}

// ConnEcho writes one line and reads it back.
func (a *agent) ConnEcho(args agentapi.ConnEchoArgs, r *agentapi.ConnEchoReply) error {
	c, err := a.conn(args.ID)
	if err != nil {
		return err
	}
	if strings.Contains(args.Data, "\n") {
		return errors.New("data must be one line")
	}
	d := args.Timeout
	if d <= 0 {
		d = 5 * time.Second
	}
	_ = c.c.SetDeadline(time.Now().Add(d))
	defer c.c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c.c, args.Data+"\n"); err != nil {
		return fmt.Errorf("connection %d: write: %w", args.ID, err)
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("connection %d: read: %w", args.ID, err)
	}
	r.Data = strings.TrimSuffix(line, "\n")
	return nil
}

// ConnClose closes a connection.
func (a *agent) ConnClose(args agentapi.ConnArgs, _ *agentapi.Empty) error {
	c, err := a.conn(args.ID)
	if err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.conns, args.ID)
	a.mu.Unlock()
	return c.c.Close()
}

// HTTPGet fetches a URL.
func (a *agent) HTTPGet(args agentapi.HTTPGetArgs, r *agentapi.HTTPGetReply) error {
	ctx, cancel := timeoutCtx(args.Timeout)
	defer cancel()
	tr := &http.Transport{DialContext: nsDialer{args.NetNS}.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args.URL, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	r.Status, r.Body = resp.StatusCode, string(b)
	return err
}

func jsonUnmarshal(s string, v any) error {
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), v); err != nil {
		return fmt.Errorf("bad greeting %q: %w", s, err)
	}
	return nil
}

// reapOrphans waits for zombie children that no exec.Cmd owns: as PID 1 the
// agent inherits every orphan in the guest.
func (a *agent) reapOrphans() {
	for range time.Tick(time.Second) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// "pid (comm) S ppid ...": comm may hold spaces; parse after ')'.
			i := bytes.LastIndexByte(b, ')')
			if i < 0 {
				continue
			}
			f := strings.Fields(string(b[i+1:]))
			if len(f) < 2 || f[0] != "Z" || f[1] != "1" {
				continue
			}
			a.spawnMu.Lock()
			if !a.mine[pid] {
				var ws syscall.WaitStatus
				_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			}
			a.spawnMu.Unlock()
		}
	}
}
