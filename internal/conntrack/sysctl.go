package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"k8s.io/utils/cpuset"
)

// Sysctl names (relative to /proc/sys) that ApplySysctls manages.
const (
	SysctlMax                  = "net/netfilter/nf_conntrack_max"
	SysctlTCPEstablished       = "net/netfilter/nf_conntrack_tcp_timeout_established"
	SysctlTCPCloseWait         = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	SysctlTCPBeLiberal         = "net/netfilter/nf_conntrack_tcp_be_liberal"
	SysctlUDPTimeout           = "net/netfilter/nf_conntrack_udp_timeout"
	SysctlUDPStreamTimeout     = "net/netfilter/nf_conntrack_udp_timeout_stream"
	defaultHashsizePath        = "/sys/module/nf_conntrack/parameters/hashsize"
	defaultProcSysRoot         = "/proc/sys"
	conntrackMaxLimit      int = 1 << 20
)

// SysctlConfig is the conntrack part of the proxy configuration. It has
// exactly the fields of config.Conntrack, so `conntrack.SysctlConfig(c)`
// converts one (this package does not import the config package).
// Zero values leave the kernel's setting unchanged.
type SysctlConfig struct {
	// MaxPerCore is nf_conntrack_max per CPU; 0 leaves the limit (and Min
	// is ignored).
	MaxPerCore int32
	// Min is the lower bound for nf_conntrack_max.
	Min                   int32
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal=1.
	TCPBeLiberal     bool
	UDPTimeout       time.Duration
	UDPStreamTimeout time.Duration
}

// Sysctl is the kernel boundary for conntrack tunables.
type Sysctl interface {
	// Get reads an integer sysctl by its /proc/sys-relative name
	// ("net/netfilter/nf_conntrack_max").
	Get(name string) (int, error)
	// Set writes an integer sysctl.
	Set(name string, value int) error
	// Writable reports whether this process may change the sysctl here.
	// Outside the initial network namespace the kernel makes
	// nf_conntrack_max read-only, and that is how ApplySysctls knows it
	// must also leave the (host-wide) hashsize alone.
	Writable(name string) bool
	// Hashsize reads the nf_conntrack module's hashsize parameter
	// (host-wide, not per network namespace).
	Hashsize() (int, error)
	// SetHashsize writes it.
	SetHashsize(value int) error
	// NumCPU is the node's online CPU count. nf_conntrack_max is
	// host-wide, so it must not shrink with the process's cpuset.
	NumCPU() int
}

// ProcSysctl is the real Sysctl, reading and writing files. Zero values
// of its fields mean the real locations.
type ProcSysctl struct {
	// ProcSysRoot is where sysctls live (default /proc/sys).
	ProcSysRoot string
	// HashsizePath is the module parameter file (default
	// /sys/module/nf_conntrack/parameters/hashsize).
	HashsizePath string
}

var _ Sysctl = ProcSysctl{}

func (p ProcSysctl) path(name string) (string, error) {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	clean := filepath.Clean(name)
	if name == "" || filepath.IsAbs(name) || clean != name || strings.HasPrefix(clean, "..") {
		return "", fmt.Errorf("invalid sysctl name %q", name)
	}
	root := p.ProcSysRoot
	if root == "" {
		root = defaultProcSysRoot
	}
	return filepath.Join(root, clean), nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: not an integer: %q", path, strings.TrimSpace(string(b)))
	}
	return v, nil
}

func writeInt(path string, v int) error {
	// No O_CREATE: a missing sysctl must fail with ENOENT, not be created.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(strconv.Itoa(v)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Get implements Sysctl.
func (p ProcSysctl) Get(name string) (int, error) {
	path, err := p.path(name)
	if err != nil {
		return 0, err
	}
	return readInt(path)
}

// Set implements Sysctl.
func (p ProcSysctl) Set(name string, value int) error {
	path, err := p.path(name)
	if err != nil {
		return err
	}
	return writeInt(path, value)
}

// Writable implements Sysctl (access(2) applies the same permission check
// as the write would).
func (p ProcSysctl) Writable(name string) bool {
	path, err := p.path(name)
	if err != nil {
		return false
	}
	return unix.Access(path, unix.W_OK) == nil
}

func (p ProcSysctl) hashsizePath() string {
	if p.HashsizePath != "" {
		return p.HashsizePath
	}
	return defaultHashsizePath
}

// Hashsize implements Sysctl.
func (p ProcSysctl) Hashsize() (int, error) { return readInt(p.hashsizePath()) }

// SetHashsize implements Sysctl.
func (p ProcSysctl) SetHashsize(v int) error { return writeInt(p.hashsizePath(), v) }

// NumCPU implements Sysctl: the online CPUs from sysfs (what kube-proxy
// uses since runtime.NumCPU undercounts under a static CPU policy), else
// runtime.NumCPU.
func (ProcSysctl) NumCPU() int {
	if n, err := cpuset.NumCPU(); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// ConntrackMax is the nf_conntrack_max kube-proxy would set: MaxPerCore ×
// CPUs, at least Min, capped at 1Mi entries (kube-proxy's cap against
// excessive memory use on many-core machines); 0 means leave it alone.
func ConntrackMax(cfg SysctlConfig, numCPU int) int {
	if cfg.MaxPerCore <= 0 {
		return 0
	}
	if numCPU < 1 {
		numCPU = 1
	}
	scaled := int(cfg.MaxPerCore) * numCPU
	if scaled > conntrackMaxLimit {
		return conntrackMaxLimit
	}
	if floor := int(cfg.Min); scaled < floor {
		return floor
	}
	return scaled
}

// notPermittedHere reports errors that mean "this setting cannot be
// changed from where we run" rather than a fault: read-only outside the
// initial network namespace (EACCES/EPERM), /proc/sys or /sys mounted
// read-only in a container (EROFS), nf_conntrack not loaded or the
// knob absent in this kernel (ENOENT).
func notPermittedHere(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) ||
		errors.Is(err, syscall.EROFS)
}

// ApplySysctls sets the conntrack sysctls as kube-proxy does at start-up:
// nf_conntrack_max is only ever raised (and the hashsize raised to a
// quarter of it), the timeouts and tcp_be_liberal are set when configured.
// A setting this network namespace does not allow changing is skipped
// with an info log, not an error; any other failure is returned.
func ApplySysctls(cfg SysctlConfig, s Sysctl, logger *zap.Logger) error {
	if logger == nil {
		return errors.New("conntrack sysctls: logger is required")
	}
	if cfg.MaxPerCore < 0 || cfg.Min < 0 {
		return fmt.Errorf("conntrack sysctls: maxPerCore (%d) and min (%d) must not be negative", cfg.MaxPerCore, cfg.Min)
	}
	for _, d := range []time.Duration{cfg.TCPEstablishedTimeout, cfg.TCPCloseWaitTimeout, cfg.UDPTimeout, cfg.UDPStreamTimeout} {
		if d < 0 {
			return fmt.Errorf("conntrack sysctls: negative timeout %v", d)
		}
	}

	if max := ConntrackMax(cfg, s.NumCPU()); max > 0 {
		if err := applyMax(s, max, logger); err != nil {
			return err
		}
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{SysctlTCPEstablished, cfg.TCPEstablishedTimeout},
		{SysctlTCPCloseWait, cfg.TCPCloseWaitTimeout},
		{SysctlUDPTimeout, cfg.UDPTimeout},
		{SysctlUDPStreamTimeout, cfg.UDPStreamTimeout},
	} {
		if t.d <= 0 {
			continue
		}
		// Round up: a sub-second setting must not become 0 (which the
		// kernel would take as "expire at once").
		secs := int((t.d + time.Second - 1) / time.Second)
		if err := setIfDifferent(s, t.name, secs, logger); err != nil {
			return err
		}
	}
	if cfg.TCPBeLiberal {
		if err := setIfDifferent(s, SysctlTCPBeLiberal, 1, logger); err != nil {
			return err
		}
	}
	return nil
}

func applyMax(s Sysctl, max int, logger *zap.Logger) error {
	if !s.Writable(SysctlMax) {
		// Outside the initial network namespace nf_conntrack_max is
		// read-only, and the hashsize is host-wide: both belong to
		// whoever runs in the host's namespace.
		cur, _ := s.Get(SysctlMax)
		logger.Info("not setting nf_conntrack_max and hashsize: not writable here (outside the initial network namespace, or /proc/sys is read-only)",
			zap.String("sysctl", SysctlMax), zap.Int("value", max), zap.Int("current", cur))
		return nil
	}
	cur, err := s.Get(SysctlMax)
	if err != nil && !notPermittedHere(err) {
		return fmt.Errorf("reading %s: %w", SysctlMax, err)
	}
	// Only raise: an admin (or another component) may have set more.
	if err != nil || cur < max {
		if err := s.Set(SysctlMax, max); err != nil {
			if notPermittedHere(err) {
				logger.Info("not setting nf_conntrack_max: not permitted here",
					zap.String("sysctl", SysctlMax), zap.Int("value", max), zap.Error(err))
				return nil
			}
			return fmt.Errorf("setting %s=%d: %w", SysctlMax, max, err)
		}
		logger.Info("set sysctl", zap.String("sysctl", SysctlMax), zap.Int("value", max), zap.Int("previous", cur))
	}

	// A hash table much smaller than the entry limit makes lookups walk
	// long chains; kube-proxy keeps it at max/4.
	hs, err := s.Hashsize()
	if err != nil {
		if notPermittedHere(err) {
			logger.Info("not checking conntrack hashsize: not readable here", zap.Error(err))
			return nil
		}
		return fmt.Errorf("reading conntrack hashsize: %w", err)
	}
	if hs >= max/4 {
		return nil
	}
	if err := s.SetHashsize(max / 4); err != nil {
		if notPermittedHere(err) {
			logger.Info("not setting conntrack hashsize: not permitted here (is /sys read-only?)",
				zap.Int("value", max/4), zap.Int("current", hs), zap.Error(err))
			return nil
		}
		return fmt.Errorf("setting conntrack hashsize=%d: %w", max/4, err)
	}
	logger.Info("set conntrack hashsize", zap.Int("value", max/4), zap.Int("previous", hs))
	return nil
}

func setIfDifferent(s Sysctl, name string, v int, logger *zap.Logger) error {
	cur, err := s.Get(name)
	if err != nil {
		if notPermittedHere(err) {
			logger.Info("not setting sysctl: not available here", zap.String("sysctl", name), zap.Int("value", v), zap.Error(err))
			return nil
		}
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if cur == v {
		return nil
	}
	if err := s.Set(name, v); err != nil {
		if notPermittedHere(err) {
			logger.Info("not setting sysctl: not permitted in this network namespace",
				zap.String("sysctl", name), zap.Int("value", v), zap.Int("current", cur), zap.Error(err))
			return nil
		}
		return fmt.Errorf("setting %s=%d: %w", name, v, err)
	}
	logger.Info("set sysctl", zap.String("sysctl", name), zap.Int("value", v), zap.Int("previous", cur))
	return nil
}
