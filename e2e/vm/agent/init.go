package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
	"github.com/kpr-proxy/kpr/e2e/vm/kmod"
)

// guestPath is every process's PATH: the overlay's programs, then the real
// tools, then busybox's applets.
const guestPath = "/opt/kpr/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func runInit() {
	start := time.Now()
	a := newAgent()
	a.bootf("agent started as init")
	if err := mountAll(); err != nil {
		a.bootf("mounts: %v", err)
	}
	os.Setenv("PATH", guestPath)
	os.Setenv("HOME", "/root")
	if h := cmdlineParam("kpr.hostname"); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			a.bootf("hostname %s: %v", h, err)
		}
	}
	go a.reapOrphans()
	if err := a.loadModules(); err != nil {
		// Reported through Ping and the console; the harness fails the
		// boot with it rather than the agent giving up (the console log
		// is the evidence).
		a.bootf("MODULES FAILED: %v", err)
	}
	a.bootf("boot done in %s (since kernel start: %s)", time.Since(start).Round(time.Millisecond), uptime().Round(time.Millisecond))
	a.serve()
}

// mountAll mounts what tools expect: /proc, /sys, /dev, tmpfs /run and
// /tmp. The initramfs root stays the root.
func mountAll() error {
	var errs []error
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err))
		}
	}
	return errors.Join(errs...)
}

func cmdlineParam(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var secs float64
	fmt.Sscan(string(b), &secs)
	return time.Duration(secs * float64(time.Second))
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return string(bytes.TrimRight(u.Release[:], "\x00"))
}

// loadModules loads the boot module list in dependency order with
// finit_module(2), so a missing or failing module is named precisely.
func (a *agent) loadModules() error {
	start := time.Now()
	dir := filepath.Join("/lib/modules", kernelRelease())
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return err
	}
	ix, err := kmod.Parse(f)
	f.Close()
	if err != nil {
		return err
	}
	list, err := os.ReadFile(agentapi.BootModulesFile)
	if err != nil {
		return err
	}
	order, err := ix.LoadOrder(strings.Fields(string(list))...)
	if err != nil {
		return err
	}
	var errs []error
	for _, file := range order {
		if err := finitModule(filepath.Join(dir, file), moduleParams[kmod.Name(file)]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", kmod.Name(file), err))
		}
	}
	a.bootf("loaded %d modules in %s", len(order)-len(errs), time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}

// moduleParams are load parameters: dummy would otherwise create a dummy0
// link nobody asked for (the proxy makes its own, kube-ipvs0 or kpr's).
var moduleParams = map[string]string{"dummy": "numdummies=0"}

func finitModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), params, 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// findPort waits for the virtio-serial port named agentapi.PortName and
// returns its device path.
func findPort(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err == nil && strings.TrimSpace(string(b)) == agentapi.PortName {
				dev := filepath.Join("/dev", filepath.Base(filepath.Dir(e)))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio port named %s after %s (found %v)", agentapi.PortName, timeout, ents)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serve answers RPCs on the virtio port for ever; if the host side goes
// away the port is reopened.
func (a *agent) serve() {
	srv := rpc.NewServer()
	if err := srv.RegisterName(agentapi.Service, a); err != nil {
		a.bootf("rpc register: %v", err)
		return
	}
	for {
		dev, err := findPort(30 * time.Second)
		if err != nil {
			a.bootf("%v", err)
			continue
		}
		port, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			a.bootf("open %s: %v", dev, err)
			time.Sleep(time.Second)
			continue
		}
		a.bootf("serving on %s (%s)", dev, agentapi.PortName)
		srv.ServeCodec(jsonrpc.NewServerCodec(port))
		a.bootf("control channel closed; reopening")
		time.Sleep(200 * time.Millisecond)
	}
}
