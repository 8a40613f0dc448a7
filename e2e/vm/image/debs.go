package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Downloads go through the machine's own apt configuration (its mirror, its
// keys): `apt-get download` fetches a package's .deb without installing it.
// The .debs are kept under <cache>/debs with a manifest, so a warm run asks
// apt nothing at all.

type manifest struct {
	// KernelPackage is the real kernel package KernelMeta pointed at.
	KernelPackage string `json:"kernel_package"`
	// Files maps package name to its .deb file name in the debs dir.
	Files map[string]string `json:"files"`
}

func (m *manifest) complete() bool {
	if m.KernelPackage == "" || m.Files[m.KernelPackage] == "" {
		return false
	}
	for _, p := range userPackages {
		if m.Files[p] == "" {
			return false
		}
	}
	return true
}

func readManifest(path string) *manifest {
	m := &manifest{Files: map[string]string{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	if json.Unmarshal(b, m) != nil || m.Files == nil {
		return &manifest{Files: map[string]string{}}
	}
	return m
}

func writeManifest(path string, m *manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// apt runs apt commands, running `apt-get update` once (per process) when a
// look-up fails for want of package lists, as on a fresh machine.
type apt struct {
	progress io.Writer
	updated  sync.Once
}

func (a *apt) run(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, lastLines(out.String(), 5))
	}
	return out.Bytes(), nil
}

// withUpdate runs fn; if it fails, runs `apt-get update` (once) and tries
// again.
func (a *apt) withUpdate(fn func() error) error {
	err := fn()
	if err == nil {
		return nil
	}
	ran := false
	a.updated.Do(func() {
		ran = true
		fmt.Fprintln(a.progress, "e2e/vm: apt failed, running apt-get update once and retrying")
		if _, uerr := a.run("/", "apt-get", "update", "-qq"); uerr != nil {
			err = errors.Join(err, uerr)
		}
	})
	if !ran {
		return err
	}
	return fn()
}

var dependsRe = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[^\s<>]+)\s*$`)

// kernelPackage resolves KernelMeta to the real kernel package name.
func (a *apt) kernelPackage() (string, error) {
	var name string
	err := a.withUpdate(func() error {
		out, err := a.run("/", "apt-cache", "depends", KernelMeta)
		if err != nil {
			return err
		}
		m := dependsRe.FindSubmatch(out)
		if m == nil {
			return fmt.Errorf("apt-cache depends %s: no linux-image dependency in %q", KernelMeta, lastLines(string(out), 10))
		}
		name = string(m[1])
		return nil
	})
	return name, err
}

// download fetches the packages' .debs into dir and returns package -> file.
func (a *apt) download(dir string, pkgs []string) (map[string]string, error) {
	if len(pkgs) == 0 {
		return map[string]string{}, nil
	}
	fmt.Fprintf(a.progress, "e2e/vm: downloading %d Debian packages (%s)…\n", len(pkgs), strings.Join(pkgs, " "))
	err := a.withUpdate(func() error {
		// The sandbox user _apt cannot write into the cache directory.
		args := append([]string{"apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"}, pkgs...)
		_, err := a.run(dir, args...)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range pkgs {
		f, err := newestDeb(dir, p)
		if err != nil {
			return nil, err
		}
		out[p] = f
	}
	return out, nil
}

// newestDeb finds the .deb of package p in dir (name_version_arch.deb).
func newestDeb(dir, p string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
	if err != nil {
		return "", err
	}
	if len(matches) == 0 {
		return "", fmt.Errorf("apt-get download %s left no %s_*.deb in %s", p, p, dir)
	}
	sort.Slice(matches, func(i, j int) bool {
		si, _ := os.Stat(matches[i])
		sj, _ := os.Stat(matches[j])
		return si.ModTime().After(sj.ModTime())
	})
	return filepath.Base(matches[0]), nil
}

// install installs Debian packages on the host (qemu, kmod) when their
// command is missing.
func (a *apt) install(pkgs ...string) error {
	fmt.Fprintf(a.progress, "e2e/vm: installing %s on the host (apt-get install)…\n", strings.Join(pkgs, " "))
	return a.withUpdate(func() error {
		_, err := a.run("/", append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, pkgs...)...)
		return err
	})
}

// unpack extracts a .deb into dir (once: a marker records completion).
func unpack(deb, dir string) error {
	marker := filepath.Join(dir, ".unpacked")
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, bytes.TrimSpace(out))
	}
	return os.WriteFile(marker, nil, 0o644)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
