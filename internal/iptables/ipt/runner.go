package ipt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Config configures a Runner.
type Config struct {
	Family  model.Family
	Backend Backend // required; see DetectBackend
	Logger  *zap.Logger
	// LockWait bounds the wait for the xtables lock (-w). Default 5s.
	LockWait time.Duration
	// Timeout bounds each iptables-restore/-save run on top of the caller's
	// context. Default 10 minutes: huge batches on nf_tables are slow.
	Timeout time.Duration
	// BinDir, if set, is where the iptables binaries are looked up instead of
	// PATH.
	BinDir string
}

// Runner implements Interface with the iptables binaries: go-iptables for
// single-rule operations, os/exec for restore and save (go-iptables has no
// restore).
type Runner struct {
	family      model.Family
	backend     Backend
	log         *zap.Logger
	timeout     time.Duration
	bins        binaries
	ipt         *iptables.IPTables
	restoreWait []string
}

var _ Interface = (*Runner)(nil)

// binaries are the three tools of one family and backend.
type binaries struct {
	cmd, save, restore string
}

// missingPackageHint names what to install; the binaries come from the
// iptables package on Debian/Ubuntu and iptables-nft/iptables-legacy on
// RHEL/Fedora.
const missingPackageHint = "install the iptables package (Debian/Ubuntu: apt-get install iptables; RHEL/Fedora: dnf install iptables-nft or iptables-legacy)"

// New returns a Runner for cfg.Family and cfg.Backend. It runs `iptables
// --version` (which touches no netfilter state) to learn the tool's features.
func New(cfg Config) (*Runner, error) {
	if cfg.Family != model.IPv4 && cfg.Family != model.IPv6 {
		return nil, fmt.Errorf("ipt: invalid IP family %v", cfg.Family)
	}
	if cfg.Backend != BackendLegacy && cfg.Backend != BackendNFT {
		return nil, fmt.Errorf("ipt: invalid iptables backend %q (want %q or %q)", cfg.Backend, BackendLegacy, BackendNFT)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.LockWait <= 0 {
		cfg.LockWait = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	bins, err := findBinaries(cfg.Family, cfg.Backend, cfg.BinDir)
	if err != nil {
		return nil, err
	}
	proto := iptables.ProtocolIPv4
	if cfg.Family == model.IPv6 {
		proto = iptables.ProtocolIPv6
	}
	lockSecs := max(1, int((cfg.LockWait+time.Second-1)/time.Second))
	h, err := iptables.New(iptables.IPFamily(proto), iptables.Path(bins.cmd), iptables.Timeout(lockSecs))
	if err != nil {
		return nil, fmt.Errorf("ipt: %s: %w", bins.cmd, err)
	}
	v1, v2, v3 := h.GetIptablesVersion()
	r := &Runner{
		family:      cfg.Family,
		backend:     cfg.Backend,
		timeout:     cfg.Timeout,
		bins:        bins,
		ipt:         h,
		restoreWait: restoreWaitArgs(v1, v2, v3, lockSecs),
	}
	r.log = cfg.Logger.With(zap.String("ip_family", cfg.Family.String()), zap.String("iptables_backend", string(cfg.Backend)))
	r.log.Debug("iptables runner ready",
		zap.String("iptables_restore", bins.restore),
		zap.String("iptables_version", fmt.Sprintf("%d.%d.%d", v1, v2, v3)),
		zap.Strings("restore_wait_args", r.restoreWait))
	return r, nil
}

// restoreWaitArgs are the xtables lock flags iptables-restore of that version
// understands: -w from 1.6.2; -W (poll interval) only before 1.8.8, which
// deprecated it and prints a warning on every run (kube-proxy dropped it for
// the same reason).
func restoreWaitArgs(v1, v2, v3, lockSecs int) []string {
	ver := v1*10000 + v2*100 + v3
	var args []string
	if ver >= 10602 {
		args = append(args, "-w", strconv.Itoa(lockSecs))
		if ver < 10808 {
			args = append(args, "-W", "100000")
		}
	}
	return args
}

func familyBase(f model.Family) string {
	if f == model.IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// findBinaries locates <base>-<backend>{,-save,-restore}, falling back to the
// unsuffixed tools when `<base> --version` reports the wanted mode (systems
// with only one backend often ship just those).
func findBinaries(f model.Family, b Backend, binDir string) (binaries, error) {
	base := familyBase(f)
	look := func(name string) (string, error) {
		if binDir != "" {
			name = filepath.Join(binDir, name)
		}
		return exec.LookPath(name)
	}
	resolve := func(prefix string) (binaries, error) {
		var out binaries
		var err error
		if out.cmd, err = look(prefix); err != nil {
			return out, err
		}
		if out.save, err = look(prefix + "-save"); err != nil {
			return out, err
		}
		if out.restore, err = look(prefix + "-restore"); err != nil {
			return out, err
		}
		return out, nil
	}
	suffixed := base + "-" + string(b)
	bins, err := resolve(suffixed)
	if err == nil {
		return bins, nil
	}
	plain, perr := resolve(base)
	if perr == nil {
		if mode, _, verr := toolMode(context.Background(), plain.cmd); verr == nil && mode == b {
			return plain, nil
		}
	}
	return binaries{}, fmt.Errorf("ipt: %s backend for %v is not available: %v; %s", b, f, err, missingPackageHint)
}

// toolMode runs `<cmd> --version` and returns the backend it reports
// ("(nf_tables)" or "(legacy)"; versions before 1.8 print neither and are
// legacy) and the version line.
func toolMode(ctx context.Context, cmd string) (Backend, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cmd, "--version").Output()
	if err != nil {
		return "", "", fmt.Errorf("%s --version: %w", cmd, err)
	}
	line := strings.TrimSpace(string(out))
	if strings.Contains(line, "nf_tables") {
		return BackendNFT, line, nil
	}
	return BackendLegacy, line, nil
}

func (r *Runner) Family() model.Family { return r.family }
func (r *Runner) Backend() Backend     { return r.backend }
func (r *Runner) HasRandomFully() bool { return r.ipt.HasRandomFully() }

// run executes a binary with stdin, bounded by ctx and r.timeout.
func (r *Runner) run(ctx context.Context, stdin []byte, path string, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	// Killed on timeout, do not wait forever for pipes held by a child.
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return outBuf.Bytes(), errBuf.Bytes(), err
}

func (r *Runner) Restore(ctx context.Context, data []byte) error {
	return r.restore(ctx, data, false)
}

func (r *Runner) RestoreTest(ctx context.Context, data []byte) error {
	return r.restore(ctx, data, true)
}

func (r *Runner) restore(ctx context.Context, data []byte, test bool) error {
	args := []string{"--noflush"}
	if test {
		args = append(args, "--test")
	}
	args = append(args, r.restoreWait...)
	start := time.Now()
	stdout, stderr, err := r.run(ctx, data, r.bins.restore, args...)
	if err != nil {
		msg := strings.TrimSpace(string(stderr) + "\n" + string(stdout))
		return &RestoreError{Line: ParseRestoreLine(msg), Stderr: msg, Err: err}
	}
	r.log.Debug("iptables-restore done",
		zap.Bool("test", test),
		zap.Int("bytes", len(data)),
		zap.Duration("duration", time.Since(start)))
	return nil
}

func (r *Runner) SaveTable(ctx context.Context, table Table) ([]byte, error) {
	stdout, stderr, err := r.run(ctx, nil, r.bins.save, "-t", string(table))
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", filepath.Base(r.bins.save), table, err, strings.TrimSpace(string(stderr)))
	}
	return stdout, nil
}

func (r *Runner) ListChains(ctx context.Context, table Table) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	chains, err := r.ipt.ListChains(string(table))
	if err != nil {
		return nil, fmt.Errorf("list chains of %s: %w", table, err)
	}
	return chains, nil
}

func (r *Runner) ChainExists(table Table, chain string) (bool, error) {
	ok, err := r.ipt.ChainExists(string(table), chain)
	if err != nil {
		return false, fmt.Errorf("check chain %s/%s: %w", table, chain, err)
	}
	return ok, nil
}

func (r *Runner) EnsureChain(table Table, chain string) (bool, error) {
	ok, err := r.ChainExists(table, chain)
	if err != nil || ok {
		return ok, err
	}
	if err := r.ipt.NewChain(string(table), chain); err != nil {
		// Lost a race with someone creating it: that is the wanted state.
		if ok, cerr := r.ChainExists(table, chain); cerr == nil && ok {
			return true, nil
		}
		return false, fmt.Errorf("create chain %s/%s: %w", table, chain, err)
	}
	return false, nil
}

func (r *Runner) EnsureRule(pos RulePosition, table Table, chain string, args ...string) (bool, error) {
	ok, err := r.RuleExists(table, chain, args...)
	if err != nil || ok {
		return ok, err
	}
	if pos == Prepend {
		err = r.ipt.Insert(string(table), chain, 1, args...)
	} else {
		err = r.ipt.Append(string(table), chain, args...)
	}
	if err != nil {
		return false, fmt.Errorf("%s rule to %s/%s: %w", pos, table, chain, err)
	}
	return false, nil
}

func (r *Runner) RuleExists(table Table, chain string, args ...string) (bool, error) {
	ok, err := r.ipt.Exists(string(table), chain, args...)
	if err != nil {
		return false, fmt.Errorf("check rule in %s/%s: %w", table, chain, err)
	}
	return ok, nil
}

func (r *Runner) DeleteRule(table Table, chain string, args ...string) error {
	ok, err := r.ipt.Exists(string(table), chain, args...)
	if err != nil {
		// `-C` fails outright when the rule jumps to a chain that no longer
		// exists; such a rule cannot exist either, which is what we want.
		if t := JumpTarget(args); t != "" && !IsExtensionTarget(t) {
			if exists, cerr := r.ChainExists(table, t); cerr == nil && !exists {
				return nil
			}
		}
		return fmt.Errorf("check rule in %s/%s: %w", table, chain, err)
	}
	if !ok {
		return nil
	}
	if err := r.ipt.Delete(string(table), chain, args...); err != nil {
		return fmt.Errorf("delete rule from %s/%s: %w", table, chain, err)
	}
	return nil
}

func (r *Runner) FlushChain(table Table, chain string) error {
	ok, err := r.ChainExists(table, chain)
	if err != nil || !ok {
		return err
	}
	if err := r.ipt.ClearChain(string(table), chain); err != nil {
		return fmt.Errorf("flush chain %s/%s: %w", table, chain, err)
	}
	return nil
}

func (r *Runner) DeleteChain(table Table, chain string) error {
	ok, err := r.ChainExists(table, chain)
	if err != nil || !ok {
		return err
	}
	if err := r.ipt.DeleteChain(string(table), chain); err != nil {
		var ierr *iptables.Error
		if errors.As(err, &ierr) && ierr.IsNotExist() {
			return nil
		}
		return fmt.Errorf("delete chain %s/%s: %w", table, chain, err)
	}
	return nil
}
