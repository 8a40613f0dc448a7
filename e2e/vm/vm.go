// Package vm runs one node of an e2e cluster inside a qemu guest with
// Debian's kernel, so kube-proxy's IPVS mode (absent from the host kernel)
// can be tested for real. See README.md.
//
// The guest boots under TCG (software emulation) from a kernel and an
// initramfs built by e2e/vm/image; its /init is the agent (e2e/vm/agent),
// which the harness drives over a virtio-serial port connected to a unix
// socket. qemu runs inside the cluster's control-plane namespace with user
// networking restricted to a single guestfwd: the guest's 192.0.2.2:6443
// is relayed to the apiserver there, and nothing else leaves the guest.
package vm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/framework"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
	"github.com/kpr-proxy/kpr/e2e/vm/image"
)

// Config says how to boot the VM.
type Config struct {
	// Node is the 0-based index of the cluster node the VM plays (its
	// name, addresses and pod CIDR). Default 0 (node1). Nothing should run
	// in that node's host namespace.
	Node int
	// MemoryMiB (default 2048) and CPUs (default 2) size the guest.
	MemoryMiB, CPUs int
	// Files are extra files for the guest (e.g. the proxy binary), put in
	// the per-run initramfs overlay.
	Files []image.OverlayFile
	// BootTimeout bounds boot until the agent answers (default 3m: a
	// cold TCG boot on a loaded 2-core machine).
	BootTimeout time.Duration
}

// VM is a booted guest playing one node.
type VM struct {
	// Agent is the control channel.
	Agent *agentapi.Client
	// Node is the cluster node the VM plays.
	Node *framework.Node
	// Image is the kernel and base initramfs booted.
	Image *image.Image
	// ConsoleLog is the serial console (kernel messages, agent's boot log).
	ConsoleLog string
	// BootTime is from qemu's start to the agent's first answer;
	// GuestUptime the guest's own uptime then.
	BootTime, GuestUptime time.Duration
	// KernelRelease is the guest's `uname -r`.
	KernelRelease string

	c    *framework.Cluster
	qemu *framework.Process
	dir  string

	mu          sync.Mutex
	nextIP      int
	stopSignals chan struct{}
}

// Addresses inside the guest (all from the address plan).
var (
	// RouterIPv4 is qemu's slirp gateway address: the node's default
	// gateway and, with restrict=on, a sink that forwards nothing.
	RouterIPv4 = framework.RouterIPv4
	// OutsideIPv4 is the outside client namespace inside the guest,
	// behind the node (198.51.100.1 on ext0).
	OutsideIPv4 = framework.OutsideIPv4
)

// Namespace names inside the guest.
const (
	OutsideNS = "outside"
	ClientNS  = "client"
)

// Boot builds (or finds in the cache) the image, boots the guest in the
// cluster's control-plane namespace and waits for the agent. The VM is
// stopped and its temporary files removed when the test ends; on failure
// the guest's state is saved first (see SaveEvidence).
func Boot(t testing.TB, c *framework.Cluster, cfg Config) *VM {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: ip (iproute2) not installed")
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 2048
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 3 * time.Minute
	}
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Ensure(image.Config{CacheDir: filepath.Join(moduleDir, "_cache", "vm"), Progress: os.Stderr})
	if err != nil {
		t.Fatalf("VM image: %v", err)
	}
	c.Log.Info("vm image", zap.String("kernel", img.KernelPackage), zap.Bool("built", img.Built), zap.Duration("took", img.Took))

	sweepStaleDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", tmpPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	v := &VM{Node: c.Node(cfg.Node), Image: img, c: c, dir: dir, nextIP: 10,
		ConsoleLog: filepath.Join(c.LogDir, "vm-console.log"), stopSignals: make(chan struct{})}
	t.Cleanup(func() { v.shutdown(t) })
	// On SIGINT/SIGTERM framework.Main's handler removes this run's
	// namespaces (which kills qemu, running in one of them) and exits
	// without running cleanups; the temporary files go at the same moment
	// (a run killed outright leaves them to the next run's sweep).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		defer signal.Stop(sigs)
		select {
		case <-sigs:
			_ = os.RemoveAll(dir)
		case <-v.stopSignals:
		}
	}()

	agentBin := filepath.Join(dir, "agent")
	start := time.Now()
	if err := goBuild(moduleDir, "./vm/agent", agentBin); err != nil {
		t.Fatalf("building the guest agent: %v", err)
	}
	echoBin := c.Binary("echo")
	files := append([]image.OverlayFile{
		{Path: image.GuestInit, Src: agentBin, Mode: 0o755},
		{Path: agentapi.BinDir + "/echo", Src: echoBin, Mode: 0o755},
	}, cfg.Files...)
	for _, f := range files {
		if f.Src != "" {
			if err := requireStatic(f.Src); err != nil {
				t.Fatal(err)
			}
		}
	}
	initrd := filepath.Join(dir, "initrd")
	if err := image.WriteInitrd(initrd, img.Initramfs, files); err != nil {
		t.Fatalf("writing initrd: %v", err)
	}
	c.Log.Info("vm initrd ready", zap.Duration("took", time.Since(start)))

	sock := filepath.Join(dir, "agent.sock")
	n := v.Node
	mac := fmt.Sprintf("52:54:00:00:02:%02x", n.IPv4.As4()[3])
	argv := []string{
		"qemu-system-x86_64",
		"-machine", "pc,accel=tcg", "-cpu", "max",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMiB),
		"-nographic", "-nodefaults", "-no-reboot", "-monitor", "none",
		"-serial", "file:" + v.ConsoleLog,
		"-kernel", img.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 mitigations=off kpr.hostname=" + n.Name,
		// User networking, restricted: the guest reaches exactly one
		// place, the apiserver, through a relay qemu spawns per
		// connection in this (the control-plane) namespace.
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,ipv6=off,net=%s,host=%s,dns=192.0.2.3,dhcpstart=192.0.2.240,guestfwd=tcp:%s:%d-cmd:%s relay %s",
			framework.NodeNetV4, RouterIPv4, framework.APIServerIPv4, framework.APIServerPort, agentBin,
			net.JoinHostPort(framework.APIServerIPv4.String(), strconv.Itoa(framework.APIServerPort))),
		"-device", "virtio-net-pci,netdev=n0,mac=" + mac,
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentapi.PortName,
		"-device", "virtio-rng-pci",
	}
	bootStart := time.Now()
	v.qemu, err = c.StartVMProcess(framework.ProcessSpec{Name: "vm-qemu", NS: c.ControlPlane(), Argv: argv})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.connect(sock, cfg.BootTimeout); err != nil {
		t.Fatalf("VM boot: %v\n--- last lines of %s:\n%s\n--- qemu:\n%s", err, v.ConsoleLog, tail(v.ConsoleLog, 40), v.qemu.Tail(20))
	}
	v.BootTime = time.Since(bootStart)
	// qemu has loaded the initrd into guest memory; the file (the size of
	// the proxy binary and more) is not needed any more.
	_ = os.Remove(initrd)
	ping, err := v.Agent.Ping(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v.KernelRelease, v.GuestUptime = ping.Kernel, ping.Uptime
	for _, l := range ping.BootLog {
		if strings.Contains(l, "FAILED") {
			t.Fatalf("guest boot: %s\n(console log: %s)", l, v.ConsoleLog)
		}
	}
	t.Logf("VM up: kernel %s, boot %s (guest uptime %s); console log %s", v.KernelRelease, v.BootTime.Round(time.Millisecond), v.GuestUptime.Round(time.Millisecond), v.ConsoleLog)
	return v
}

// connect waits for qemu's socket and for the agent's first answer.
func (v *VM) connect(sock string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	exited, exitErr := v.qemu.Exited()
	var conn net.Conn
	for conn == nil {
		var err error
		conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("qemu exited: %v", exitErr())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu socket %s: %w", sock, err)
		}
	}
	v.Agent = agentapi.NewClient(conn)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := v.Agent.Ping(ctx); done <- err }()
	select {
	case err := <-done:
		return err
	case <-exited:
		return fmt.Errorf("qemu exited before the agent answered: %v", exitErr())
	}
}

// shutdown saves the guest's logs (and, on failure, its state), stops qemu
// and removes the temporary directory.
func (v *VM) shutdown(t testing.TB) {
	if v.Agent != nil && v.qemu != nil && v.qemu.Running() {
		if t.Failed() {
			v.SaveEvidence(t, "failure")
		}
		v.copyGuestLogs()
	}
	if v.qemu != nil {
		if err := v.qemu.Stop(5 * time.Second); err != nil {
			t.Logf("stopping qemu: %v", err)
		}
	}
	if v.Agent != nil {
		_ = v.Agent.Close()
	}
	_ = os.RemoveAll(v.dir)
	close(v.stopSignals)
}

// copyGuestLogs copies the logs of guest processes into the run's log
// directory as vm-<name>.log.
func (v *VM) copyGuestLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := v.Agent.Exec(ctx, agentapi.ExecArgs{Argv: []string{"ls", agentapi.LogDir}})
	if err != nil {
		return
	}
	for _, name := range strings.Fields(r.Output) {
		b, err := v.Agent.ReadFile(ctx, agentapi.LogDir+"/"+name)
		if err == nil {
			_ = os.WriteFile(filepath.Join(v.c.LogDir, "vm-"+name), b, 0o644)
		}
	}
}

// Exec runs a command in the guest (netns "" = the node itself) and
// returns its output; a non-zero exit fails the test.
func (v *VM) Exec(t testing.TB, netns string, argv ...string) string {
	t.Helper()
	out, err := v.TryExec(netns, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryExec is Exec returning the error.
func (v *VM) TryExec(netns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := v.Agent.Exec(ctx, agentapi.ExecArgs{Argv: argv, NetNS: netns, Timeout: 60 * time.Second})
	return r.Output, err
}

// Sh runs a shell script (busybox sh, `set -e`) in the guest. Debian's
// busybox shell prefers its own applets to PATH, so `ip` is made a function
// calling iproute2's (busybox's `ip` lacks most of what is used here).
func (v *VM) Sh(t testing.TB, script string) string {
	t.Helper()
	return v.Exec(t, "", "/bin/sh", "-ec", "ip() { /bin/ip \"$@\"; }\n"+script)
}

// IPVS returns the guest's IPVS table (`ipvsadm -Ln`), parsed.
func (v *VM) IPVS(t testing.TB) *IPVSTable {
	t.Helper()
	tbl, err := v.TryIPVS()
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// TryIPVS is IPVS returning the error.
func (v *VM) TryIPVS() (*IPVSTable, error) {
	out, err := v.TryExec("", "ipvsadm", "-Ln")
	if err != nil {
		return nil, err
	}
	return ParseIPVSAdm(out)
}

// Query sends one echo query from a guest namespace.
func (v *VM) Query(ctx context.Context, netns, proto, addr string) (agentapi.QueryReply, error) {
	return v.Agent.Query(ctx, agentapi.QueryArgs{NetNS: netns, Proto: proto, Addr: addr, Timeout: 2 * time.Second})
}

// QueryMany sends n echo queries from a guest namespace and returns who
// answered how often; any failed query is an error.
func (v *VM) QueryMany(ctx context.Context, netns, proto, addr string, n int) (map[string]int, error) {
	r, err := v.Agent.QueryMany(ctx, agentapi.QueryManyArgs{QueryArgs: agentapi.QueryArgs{NetNS: netns, Proto: proto, Addr: addr, Timeout: 2 * time.Second}, Count: n})
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}
	for i, e := range r.Errors {
		if e != "" {
			return seen, fmt.Errorf("%s %s from %s: query %d of %d: %s", proto, addr, nsLabel(netns), i+1, n, e)
		}
		seen[r.Replies[i].Pod]++
	}
	return seen, nil
}

func nsLabel(netns string) string {
	if netns == "" {
		return "the node"
	}
	return netns
}

// SaveEvidence writes the guest's IPVS table, iptables rules (both
// families, the backend in use), ipsets, conntrack table, addresses and routes
// to <run dir>/vm-evidence/<label>/ and logs where.
func (v *VM) SaveEvidence(t testing.TB, label string) string {
	dir := filepath.Join(v.c.RunDir, "vm-evidence", sanitize(label))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("evidence: %v", err)
		return ""
	}
	for name, argv := range map[string][]string{
		"ipvsadm.txt":        {"ipvsadm", "-Ln"},
		"ipvsadm-stats.txt":  {"ipvsadm", "-Ln", "--stats"},
		"ipvsadm-conns.txt":  {"ipvsadm", "-Lnc"},
		"ipset.txt":          {"ipset", "list"},
		"iptables-save.txt":  {"iptables-save"},
		"ip6tables-save.txt": {"ip6tables-save"},
		"conntrack.txt":      {"conntrack", "-L"},
		"addr.txt":           {"ip", "addr"},
		"route.txt":          {"ip", "route"},
		"lsmod.txt":          {"cat", "/proc/modules"},
		"dmesg.txt":          {"dmesg"},
	} {
		out, err := v.TryExec("", argv...)
		if err != nil {
			out += "\n# error: " + err.Error()
		}
		_ = os.WriteFile(filepath.Join(dir, name), []byte(out), 0o644)
	}
	t.Logf("VM evidence (ipvsadm, iptables, ipset, conntrack, addresses) saved in %s", dir)
	return dir
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == ':' {
			return '_'
		}
		return r
	}, s)
}

// ---- addresses ----

// allocIP hands out the next pod address in the node's pod CIDR.
func (v *VM) allocIP() netip.Addr {
	v.mu.Lock()
	defer v.mu.Unlock()
	a := v.Node.PodCIDRv4.Addr().As4()
	a[3] = byte(v.nextIP)
	v.nextIP++
	return netip.AddrFrom4(a)
}

// gatewayIP is the node's address on the pod bridge (.1 of its pod CIDR).
func (v *VM) gatewayIP() netip.Addr { return v.Node.PodCIDRv4.Addr().Next() }

// ---- temporary files ----

// tmpPrefix names the VM's temporary directories (socket, initrd, agent)
// in os.TempDir(): <prefix><owner pid>-<random>.
const tmpPrefix = "kpr-e2e-vm-"

// sweepStaleDirs removes temporary directories of runs whose process is
// gone (a test binary killed outright leaves them).
func sweepStaleDirs() {
	m, _ := filepath.Glob(filepath.Join(os.TempDir(), tmpPrefix+"*"))
	for _, d := range m {
		rest := strings.TrimPrefix(filepath.Base(d), tmpPrefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pidStr)); err != nil && pid != os.Getpid() {
			_ = os.RemoveAll(d)
		}
	}
}

// goBuild builds a static binary of the e2e module's package pkg.
func goBuild(moduleDir, pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// requireStatic fails for a dynamically linked binary: the guest has only
// the libraries its own tools need.
func requireStatic(path string) error {
	interp, _, err := image.ELFInterp(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if interp != "" {
		return fmt.Errorf("%s is dynamically linked (interpreter %s); the VM needs static binaries (CGO_ENABLED=0)", path, interp)
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
