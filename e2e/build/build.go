// Package build compiles the binaries the e2e harness runs (etcd,
// kube-apiserver, kube-controller-manager, upstream kube-proxy and the echo
// workload, reference CNI plugins) from the Go modules pinned in e2e/go.mod, and caches them.
//
// A binary is rebuilt only when its cache key changes: the hash of e2e/go.mod,
// e2e/go.sum, the Go version, GOOS/GOARCH and, for packages of this module, the
// package's source files. A cold build of the Kubernetes binaries takes several
// minutes on a 2-core machine; a warm one is a few hash computations.
package build

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/kpr-proxy/kpr/e2e/filelock"
)

// KubeVersion is the Kubernetes release the harness builds (keep in step with
// the k8s.io/kubernetes requirement in e2e/go.mod).
const KubeVersion = "v1.37.2"

// Binary is one program the harness needs.
type Binary struct {
	// Name is the file name under the cache's bin dir.
	Name string
	// Package is the Go package to build: an import path from e2e/go.mod's
	// module graph, or "./..." relative to the e2e module.
	Package string
	// Slow marks binaries worth a "first build takes several minutes" note.
	Slow bool
}

// Binaries returns every binary the harness knows how to build.
func Binaries() []Binary {
	return []Binary{
		{Name: "etcd", Package: "go.etcd.io/etcd/server/v3", Slow: true},
		{Name: "kube-apiserver", Package: "k8s.io/kubernetes/cmd/kube-apiserver", Slow: true},
		{Name: "kube-controller-manager", Package: "k8s.io/kubernetes/cmd/kube-controller-manager", Slow: true},
		{Name: "kube-proxy", Package: "k8s.io/kubernetes/cmd/kube-proxy", Slow: true},
		{Name: "echo", Package: "./cmd/echo"},
		// Reference CNI plugins: the harness's fallback pod network, and a
		// yardstick for kpr's own podnet.
		{Name: "cni-bridge", Package: "github.com/containernetworking/plugins/plugins/main/bridge"},
		{Name: "cni-host-local", Package: "github.com/containernetworking/plugins/plugins/ipam/host-local"},
	}
}

// Config says where the e2e module is, where to cache, and what to build.
type Config struct {
	// ModuleDir is the e2e module root (holding go.mod). Empty: found with
	// FindModuleDir.
	ModuleDir string
	// CacheDir holds bin/. Empty: <ModuleDir>/_cache.
	CacheDir string
	// Names limits the build to these binaries. Empty: all of Binaries().
	Names []string
	// Progress receives human-readable progress lines. nil: os.Stderr.
	Progress io.Writer
	// Force rebuilds even when the cache key matches.
	Force bool
}

// Result maps binary name to its absolute path.
type Result map[string]string

// Ensure builds whatever is missing or stale and returns the paths of all
// requested binaries. Concurrent callers (go test runs packages in parallel)
// serialise on a lock file, so each binary is built once.
func Ensure(cfg Config) (Result, error) {
	if cfg.ModuleDir == "" {
		d, err := FindModuleDir()
		if err != nil {
			return nil, err
		}
		cfg.ModuleDir = d
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(cfg.ModuleDir, "_cache")
	}
	if cfg.Progress == nil {
		cfg.Progress = os.Stderr
	}
	want, err := selectBinaries(cfg.Names)
	if err != nil {
		return nil, err
	}
	binDir := filepath.Join(cfg.CacheDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := filelock.Lock(filepath.Join(binDir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	modKey, err := moduleKey(cfg.ModuleDir)
	if err != nil {
		return nil, err
	}
	res := Result{}
	for _, b := range want {
		key := modKey
		if strings.HasPrefix(b.Package, "./") {
			h, err := hashDir(filepath.Join(cfg.ModuleDir, b.Package))
			if err != nil {
				return nil, err
			}
			key = hashStrings(modKey, h)
		}
		out := filepath.Join(binDir, b.Name)
		stamp := out + ".key"
		res[b.Name] = out
		if !cfg.Force && fileHas(stamp, key) && isExecutable(out) {
			continue
		}
		note := ""
		if b.Slow {
			note = " (first build takes several minutes)"
		}
		fmt.Fprintf(cfg.Progress, "e2e: building %s%s…\n", b.Name, note)
		start := time.Now()
		if err := goBuild(cfg.ModuleDir, b.Package, out); err != nil {
			return nil, fmt.Errorf("building %s: %w", b.Name, err)
		}
		if err := os.WriteFile(stamp, []byte(key), 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(cfg.Progress, "e2e: built %s in %s\n", b.Name, time.Since(start).Round(100*time.Millisecond))
	}
	return res, nil
}

func selectBinaries(names []string) ([]Binary, error) {
	all := Binaries()
	if len(names) == 0 {
		return all, nil
	}
	var out []Binary
	for _, n := range names {
		found := false
		for _, b := range all {
			if b.Name == n {
				out = append(out, b)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown e2e binary %q", n)
		}
	}
	return out, nil
}

// goBuild builds pkg into out atomically (temp file + rename), so an
// interrupted build never leaves a half-written binary behind a valid stamp.
func goBuild(moduleDir, pkg, out string) error {
	tmp := out + ".tmp"
	ld := strings.Join([]string{
		"-s", "-w",
		// Kubernetes binaries report their version from these; without them
		// they say v0.0.0-master, which confuses logs and version checks.
		"-X", "k8s.io/component-base/version.gitVersion=" + KubeVersion,
		"-X", "k8s.io/component-base/version.gitMajor=1",
		"-X", "k8s.io/component-base/version.gitMinor=" + minor(KubeVersion),
		"-X", "k8s.io/client-go/pkg/version.gitVersion=" + KubeVersion,
		"-X", "k8s.io/client-go/pkg/version.gitMajor=1",
		"-X", "k8s.io/client-go/pkg/version.gitMinor=" + minor(KubeVersion),
	}, " ")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", tmp, pkg)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

func minor(v string) string {
	parts := strings.Split(strings.TrimPrefix(v, "v"), ".")
	if len(parts) < 2 {
		return "0"
	}
	return parts[1]
}

func moduleKey(moduleDir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(moduleDir, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s %s %s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, KubeVersion)
	goVer, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	h.Write(goVer)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashDir hashes the regular files of one package directory (not recursive).
func hashDir(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashStrings(ss ...string) string {
	h := sha256.New()
	for _, s := range ss {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileHas(path, content string) bool {
	b, err := os.ReadFile(path)
	return err == nil && string(b) == content
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// FindModuleDir locates the e2e module root: $E2E_MODULE_DIR, else the nearest
// directory at or above the working directory whose go.mod declares
// github.com/kpr-proxy/kpr/e2e, else <dir>/e2e for such a parent (so it works
// from the repository root too).
func FindModuleDir() (string, error) {
	if d := os.Getenv("E2E_MODULE_DIR"); d != "" {
		return filepath.Abs(d)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		for _, cand := range []string{d, filepath.Join(d, "e2e")} {
			if isE2EModule(cand) {
				return cand, nil
			}
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	return "", errors.New("cannot find the e2e module (github.com/kpr-proxy/kpr/e2e); run from the repository or set E2E_MODULE_DIR")
}

func isE2EModule(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first) == "module github.com/kpr-proxy/kpr/e2e"
}
