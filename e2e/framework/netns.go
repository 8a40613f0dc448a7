package framework

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kpr-proxy/kpr/e2e/echo"
)

// NSPrefix starts the name of every network namespace the harness creates.
// Full names are "<NSPrefix><pid>-<cluster>-<role>", so a sweeper can tell a
// crashed run's leftovers (owner pid gone) from a live parallel run's.
const NSPrefix = "kpre2e-"

// NetNS is a named network namespace (visible in `ip netns list`).
type NetNS struct {
	Name string
}

// Path is the namespace's bind-mount path, for setns(2) and CNI.
func (n *NetNS) Path() string { return filepath.Join("/run/netns", n.Name) }

func createNetNS(name string) (*NetNS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	n := &NetNS{Name: name}
	if _, err := n.Exec("ip", "link", "set", "lo", "up"); err != nil {
		n.destroy()
		return nil, err
	}
	return n, nil
}

// destroy kills every process still inside the namespace and removes it.
// Idempotent.
func (n *NetNS) destroy() {
	killNetNSProcesses(n.Name)
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
}

// Command returns an exec.Cmd running argv inside the namespace.
func (n *NetNS) Command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, argv...)...)
}

// Exec runs argv inside the namespace and returns its combined output. The
// error includes the output, so callers can return it as it is.
func (n *NetNS) Exec(argv ...string) (string, error) {
	var buf bytes.Buffer
	c := n.Command(argv...)
	c.Stdout, c.Stderr = &buf, &buf
	if err := c.Run(); err != nil {
		return buf.String(), fmt.Errorf("in netns %s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, strings.TrimSpace(buf.String()))
	}
	return buf.String(), nil
}

// MustExec is Exec that fails the test on error.
func (n *NetNS) MustExec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := n.Exec(argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Do runs fn on an OS thread switched into the namespace. Sockets opened and
// processes started by fn belong to the namespace.
func (n *NetNS) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path(), func(ns.NetNS) error { return fn() })
}

// Sysctl writes a /proc/sys value (key in dotted form, e.g.
// "net.ipv4.ip_forward") inside the namespace. /proc/sys/net is resolved
// against the writing thread's namespace, so no process is needed.
func (n *NetNS) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.Name, key, value, err)
		}
		return nil
	})
}

// DialContext opens a connection from inside the namespace. Only the socket's
// creation needs the namespace; the connection is then used from any thread.
// It satisfies echo.Dialer.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Query asks the echo server at addr (host:port) who it is, from inside the
// namespace, over proto "tcp", "udp" or "http". It does not retry; use
// Eventually around it while rules are being programmed.
func (n *NetNS) Query(ctx context.Context, proto, addr string) (echo.Reply, error) {
	return echo.Query(ctx, n, proto, addr)
}

// QueryTimeout is Query with its own timeout.
func (n *NetNS) QueryTimeout(timeout time.Duration, proto, addr string) (echo.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return n.Query(ctx, proto, addr)
}

func killNetNSProcesses(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = killPid(pid)
		}
	}
}

// listNetNS returns the names in `ip netns list`.
func listNetNS() ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// ownerPid extracts the owning pid from a harness namespace name.
func ownerPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, NSPrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil
}

func processAlive(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}
