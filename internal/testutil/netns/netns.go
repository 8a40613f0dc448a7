// Package netns gives tests throwaway network namespaces.
//
// House rule: nothing a test does may touch the machine's root network
// namespace. Every kernel-programming test creates its namespaces through this
// package; they are deleted (and any process left in them killed) by
// t.Cleanup, also when the test fails or panics.
package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// RequireRoot skips the test, with the reason printed, unless it runs as root
// with the `ip` tool available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces (run `make test` as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: `ip` (iproute2) not installed")
	}
}

// RequireTool skips the test unless the named binary is on PATH.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("skipping: %s not installed (apt-get install iptables ipset conntrack iproute2)", name)
	}
}

// NS is a named network namespace (visible in `ip netns list`).
type NS struct {
	Name string
	t    testing.TB
}

// New creates a namespace named "<prefix>-<random>" with loopback up, and
// registers its deletion with t.Cleanup.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("%s-%s", prefix, hex.EncodeToString(b[:]))
	if len(name) > 200 {
		t.Fatalf("netns name too long: %s", name)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, t: t}
	t.Cleanup(n.Delete)
	n.MustExec("ip", "link", "set", "lo", "up")
	return n
}

// Path is the namespace's bind-mount path, usable with setns(2) and CNI.
func (n *NS) Path() string { return filepath.Join("/run/netns", n.Name) }

// Delete kills every process still inside the namespace and removes it. It
// is idempotent and runs automatically at cleanup.
func (n *NS) Delete() {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
}

// Command returns an exec.Cmd that runs argv inside the namespace.
func (n *NS) Command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, argv...)...)
}

// Exec runs argv inside the namespace and returns combined output.
func (n *NS) Exec(argv ...string) (string, error) {
	var buf bytes.Buffer
	c := n.Command(argv...)
	c.Stdout, c.Stderr = &buf, &buf
	err := c.Run()
	return buf.String(), err
}

// MustExec is Exec that fails the test on error.
func (n *NS) MustExec(argv ...string) string {
	n.t.Helper()
	out, err := n.Exec(argv...)
	if err != nil {
		n.t.Fatalf("in netns %s: %s: %v\n%s", n.Name, strings.Join(argv, " "), err, out)
	}
	return out
}

// Do runs fn on an OS thread switched into the namespace. Child processes
// started by fn (os/exec) inherit the namespace.
func (n *NS) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path(), func(ns.NetNS) error { return fn() })
}

// Veth creates a veth pair with one end in each namespace, named ifA (in a)
// and ifB (in b), both up.
func Veth(t testing.TB, a *NS, ifA string, b *NS, ifB string) {
	t.Helper()
	tmpA, tmpB := "kv"+randHex(4), "kv"+randHex(4)
	// Created in namespace a directly, so the root namespace never holds it.
	a.MustExec("ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB, "netns", b.Name)
	a.MustExec("ip", "link", "set", tmpA, "name", ifA)
	b.MustExec("ip", "link", "set", tmpB, "name", ifB)
	a.MustExec("ip", "link", "set", ifA, "up")
	b.MustExec("ip", "link", "set", ifB, "up")
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// NewPersistent creates (or reuses) a namespace that outlives a single test,
// for fuzz targets that must not create a namespace per input. The caller
// deletes it (TestMain). It returns nil if it cannot be created.
func NewPersistent(name string) *NS {
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err != nil {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip netns add %s: %v: %s\n", name, err, out)
			return nil
		}
	}
	n := &NS{Name: name}
	_, _ = n.Exec("ip", "link", "set", "lo", "up")
	return n
}
