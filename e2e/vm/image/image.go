// Package image builds what the IPVS test VM boots: Debian's kernel and a
// base initramfs (busybox, iptables/ipset/iproute2/conntrack/ipvsadm with
// their shared libraries, /etc/protocols and /etc/services, the network and
// netfilter modules with a depmod-made modules.dep), cached under
// e2e/_cache/vm, plus a per-run overlay archive (the guest agent, the proxy,
// the echo server) appended to it.
//
// Everything comes from Debian packages fetched with the machine's own apt
// (`apt-get download`, unpacked with `dpkg-deb -x`); qemu and kmod (depmod)
// are installed on the host with apt when missing.
package image

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
	"github.com/kpr-proxy/kpr/e2e/vm/kmod"

	"github.com/kpr-proxy/kpr/e2e/filelock"
)

// builderVersion is part of the base image's cache key: bump it when the
// way the image is assembled changes.
const builderVersion = "5"

// GuestInit is where the agent goes (the kernel runs /init).
const GuestInit = "/init"

// Config says where the cache is.
type Config struct {
	// CacheDir holds debs/, unpacked/ and base-<key>/ (e2e/_cache/vm).
	CacheDir string
	// Progress receives human-readable progress lines (default os.Stderr).
	Progress io.Writer
}

// Image is a bootable kernel and base initramfs.
type Image struct {
	// Kernel is the vmlinuz file.
	Kernel string
	// Initramfs is the base archive (gzip-compressed newc cpio).
	Initramfs string
	// KernelRelease is `uname -r` in the guest ("6.1.0-56-amd64").
	KernelRelease string
	// KernelPackage is the Debian package the kernel came from.
	KernelPackage string
	// Root is the unpacked base tree (for inspection when debugging).
	Root string
	// Built says the base image was (re)built by this call rather than
	// found in the cache; Took is how long Ensure took.
	Built bool
	Took  time.Duration
}

// Ensure makes sure qemu and depmod are on the host, the packages are
// downloaded and the base image is built, reusing the cache. Concurrent
// callers serialise on a lock file.
func Ensure(cfg Config) (*Image, error) {
	start := time.Now()
	if cfg.Progress == nil {
		cfg.Progress = os.Stderr
	}
	if cfg.CacheDir == "" {
		return nil, fmt.Errorf("image.Config.CacheDir is required")
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := filelock.Lock(filepath.Join(cfg.CacheDir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	a := &apt{progress: cfg.Progress}
	if err := ensureHostTools(a); err != nil {
		return nil, err
	}

	debDir := filepath.Join(cfg.CacheDir, "debs")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return nil, err
	}
	manPath := filepath.Join(debDir, "manifest.json")
	man := readManifest(manPath)
	if !man.complete() {
		if man.KernelPackage == "" {
			if man.KernelPackage, err = a.kernelPackage(); err != nil {
				return nil, err
			}
		}
		var missing []string
		for _, p := range append([]string{man.KernelPackage}, userPackages...) {
			if f := man.Files[p]; f == "" || !exists(filepath.Join(debDir, f)) {
				missing = append(missing, p)
			}
		}
		got, err := a.download(debDir, missing)
		if err != nil {
			return nil, err
		}
		for p, f := range got {
			man.Files[p] = f
		}
		if err := writeManifest(manPath, man); err != nil {
			return nil, err
		}
	}

	kdeb := man.Files[man.KernelPackage]
	var userDebs []string
	for _, p := range userPackages {
		userDebs = append(userDebs, man.Files[p])
	}
	sort.Strings(userDebs)
	key := specKey(kdeb, userDebs)
	baseDir := filepath.Join(cfg.CacheDir, "base-"+key[:16])
	img := &Image{
		Kernel:        filepath.Join(baseDir, "vmlinuz"),
		Initramfs:     filepath.Join(baseDir, "initramfs.cpio.gz"),
		KernelPackage: man.KernelPackage,
		Root:          filepath.Join(baseDir, "root"),
	}
	releaseFile := filepath.Join(baseDir, "release")
	if b, err := os.ReadFile(releaseFile); err == nil && exists(img.Initramfs) && exists(img.Kernel) {
		img.KernelRelease = strings.TrimSpace(string(b))
		img.Took = time.Since(start)
		return img, nil
	}

	// Unpack: the kernel on its own (it gets depmod), userspace together.
	unpacked := filepath.Join(cfg.CacheDir, "unpacked")
	kroot := filepath.Join(unpacked, strings.TrimSuffix(kdeb, ".deb"))
	if err := unpack(filepath.Join(debDir, kdeb), kroot); err != nil {
		return nil, err
	}
	rel, err := kernelRelease(kroot)
	if err != nil {
		return nil, err
	}
	img.KernelRelease = rel
	uroot := filepath.Join(unpacked, "userspace-"+hashStrings(userDebs...)[:16])
	if !exists(filepath.Join(uroot, ".unpacked")) {
		_ = os.RemoveAll(uroot)
		for _, d := range userDebs {
			// Each .deb into the same tree; markers are per tree.
			if out, err := exec.Command("dpkg-deb", "-x", filepath.Join(debDir, d), uroot).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", d, err, strings.TrimSpace(string(out)))
			}
		}
		if err := os.WriteFile(filepath.Join(uroot, ".unpacked"), nil, 0o644); err != nil {
			return nil, err
		}
	}

	fmt.Fprintf(cfg.Progress, "e2e/vm: building the base initramfs (kernel %s)…\n", rel)
	pruneBases(cfg.CacheDir, baseDir)
	_ = os.RemoveAll(baseDir)
	if err := buildRoot(img.Root, kroot, uroot, rel); err != nil {
		return nil, err
	}
	if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+rel), img.Kernel, 0o644); err != nil {
		return nil, err
	}
	if err := writeDirArchive(img.Root, img.Initramfs+".tmp", true); err != nil {
		return nil, err
	}
	if err := os.Rename(img.Initramfs+".tmp", img.Initramfs); err != nil {
		return nil, err
	}
	// Written last: its presence says the base is complete.
	if err := os.WriteFile(releaseFile, []byte(rel+"\n"), 0o644); err != nil {
		return nil, err
	}
	// The unpacked packages (mostly the kernel's 400 MB of modules) are
	// only needed to build; the .debs stay as the download cache.
	_ = os.RemoveAll(unpacked)
	img.Built = true
	img.Took = time.Since(start)
	fmt.Fprintf(cfg.Progress, "e2e/vm: base image ready in %s\n", img.Took.Round(100*time.Millisecond))
	return img, nil
}

// ensureHostTools installs qemu-system-x86 and kmod when their commands are
// missing (needs root, as the whole harness does).
func ensureHostTools(a *apt) error {
	var pkgs []string
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		pkgs = append(pkgs, "qemu-system-x86")
	}
	if _, err := exec.LookPath("depmod"); err != nil {
		pkgs = append(pkgs, "kmod")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: the VM image is built from Debian packages with the host's apt", tool)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	return a.install(pkgs...)
}

func specKey(kernelDeb string, userDebs []string) string {
	parts := []string{builderVersion, kernelDeb}
	parts = append(parts, userDebs...)
	parts = append(parts, "|")
	parts = append(parts, binaries...)
	parts = append(parts, "|")
	parts = append(parts, moduleDirs...)
	parts = append(parts, "|")
	parts = append(parts, bootModules...)
	parts = append(parts, "|")
	parts = append(parts, extraModules...)
	parts = append(parts, "|")
	parts = append(parts, etcFiles...)
	parts = append(parts, iptablesFamilies...)
	parts = append(parts, iptablesSuffixes...)
	var links []string
	for k, v := range symlinks {
		links = append(links, k+"->"+v)
	}
	sort.Strings(links)
	return hashStrings(append(parts, links...)...)
}

// pruneBases removes other base-* directories (older specs).
func pruneBases(cacheDir, keep string) {
	ents, _ := os.ReadDir(cacheDir)
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "base-") && filepath.Join(cacheDir, e.Name()) != keep {
			_ = os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}

func kernelRelease(kroot string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(kroot, "lib", "modules"))
	if err != nil {
		return "", fmt.Errorf("kernel package has no lib/modules: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() && exists(filepath.Join(kroot, "boot", "vmlinuz-"+e.Name())) {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("no lib/modules/<release> with a matching boot/vmlinuz-<release> in %s", kroot)
}

// buildRoot assembles the base tree at root.
func buildRoot(root, kroot, uroot, rel string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
		"lib64", "etc/kpr-vm", "proc", "sys", "dev", "run", "tmp", "var/log", "root", "opt/kpr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Symlink("/run", filepath.Join(root, "var/run")); err != nil {
		return err
	}

	// busybox first, with a link per applet; real tools then replace the
	// applets they shadow (busybox's own `ip` would otherwise be found).
	bb := filepath.Join(uroot, "bin", "busybox")
	if err := copyFile(bb, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		dst := filepath.Join(root, applet)
		if applet == "bin/busybox" || exists(dst) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return err
		}
	}

	// Tools and their libraries.
	var bins []string
	for _, pat := range binaries {
		m, err := filepath.Glob(filepath.Join(uroot, pat))
		if err != nil || len(m) == 0 {
			return fmt.Errorf("binary %s not found in the unpacked packages", pat)
		}
		for _, f := range m {
			rel, _ := filepath.Rel(uroot, f)
			if err := replaceFile(f, filepath.Join(root, rel), 0o755); err != nil {
				return err
			}
			bins = append(bins, f)
		}
	}
	hostRoot := "/"
	libs, err := resolveLibs(bins, libFinder(uroot, hostRoot), pathFinder(uroot, hostRoot))
	if err != nil {
		return err
	}
	for so, f := range libs.Libs {
		if err := copyFile(f, filepath.Join(root, "lib/x86_64-linux-gnu", so), 0o755); err != nil {
			return err
		}
	}
	if libs.Interp != "" {
		if err := replaceFile(libs.InterpFile, filepath.Join(root, libs.Interp), 0o755); err != nil {
			return err
		}
	}
	for link, target := range symlinks {
		if err := replaceSymlink(target, filepath.Join(root, link)); err != nil {
			return err
		}
	}
	for _, fam := range iptablesFamilies {
		for _, suffix := range iptablesSuffixes {
			for _, backend := range []string{"legacy", "nft"} {
				// iptables-legacy-save -> xtables-legacy-multi, …
				if err := replaceSymlink("xtables-"+backend+"-multi", filepath.Join(root, "usr/sbin", fam+"-"+backend+suffix)); err != nil {
					return err
				}
			}
			// Debian's default (update-alternatives): nf_tables.
			// vm.SetupNode repoints these to the backend under test.
			if err := replaceSymlink("xtables-nft-multi", filepath.Join(root, "usr/sbin", fam+suffix)); err != nil {
				return err
			}
		}
	}

	// /etc.
	for _, f := range etcFiles {
		if err := copyFile(filepath.Join(uroot, f), filepath.Join(root, f), 0o644); err != nil {
			return err
		}
	}
	for name, content := range map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":         "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":         "127.0.0.1 localhost\n::1 localhost\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}

	// Kernel modules: the chosen ones with their dependencies, then
	// depmod on the subset so modprobe (the kernel's request_module
	// helper) and the agent see a consistent modules.dep.
	kmods := filepath.Join(kroot, "lib", "modules", rel)
	if !exists(filepath.Join(kmods, "modules.dep")) {
		if out, err := exec.Command("depmod", "-b", kroot, rel).CombinedOutput(); err != nil {
			return fmt.Errorf("depmod -b %s %s: %w: %s", kroot, rel, err, strings.TrimSpace(string(out)))
		}
	}
	files, err := selectModules(kmods)
	if err != nil {
		return err
	}
	gmods := filepath.Join(root, "lib", "modules", rel)
	for _, f := range files {
		if err := copyFile(filepath.Join(kmods, f), filepath.Join(gmods, f), 0o644); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if exists(filepath.Join(kmods, f)) {
			if err := copyFile(filepath.Join(kmods, f), filepath.Join(gmods, f), 0o644); err != nil {
				return err
			}
		}
	}
	if out, err := exec.Command("depmod", "-b", root, rel).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %w: %s", root, rel, err, strings.TrimSpace(string(out)))
	}
	// The list of modules to load must resolve against the subset.
	f, err := os.Open(filepath.Join(gmods, "modules.dep"))
	if err != nil {
		return err
	}
	ix, err := kmod.Parse(f)
	f.Close()
	if err != nil {
		return err
	}
	if _, err := ix.LoadOrder(bootModules...); err != nil {
		return fmt.Errorf("guest modules.dep: %w", err)
	}
	return os.WriteFile(filepath.Join(root, strings.TrimPrefix(agentapi.BootModulesFile, "/")), []byte(strings.Join(bootModules, "\n")+"\n"), 0o644)
}

// selectModules returns the module files (relative to kmods) the guest
// gets: every module under moduleDirs, bootModules and extraModules, with
// their dependencies.
func selectModules(kmods string) ([]string, error) {
	f, err := os.Open(filepath.Join(kmods, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ix, err := kmod.Parse(f)
	if err != nil {
		return nil, err
	}
	names := append(append([]string(nil), bootModules...), extraModules...)
	for _, n := range ix.Names() {
		file, _ := ix.File(n)
		for _, d := range moduleDirs {
			if strings.HasPrefix(file, d) {
				names = append(names, n)
			}
		}
	}
	return ix.Files(names...)
}

// writeDirArchive writes the tree at root as a newc cpio archive (gzip
// compressed if compress), entries sorted so parents come first and the
// output is reproducible.
func writeDirArchive(root, out string, compress bool) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	var w io.Writer = f
	var gz *gzip.Writer
	if compress {
		gz, _ = gzip.NewWriterLevel(f, gzip.BestCompression)
		w = gz
	}
	cw := NewCPIOWriter(w)
	var paths []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		if err := addPath(cw, rel, p); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return err
		}
	}
	return f.Close()
}

func addPath(cw *CPIOWriter, name, p string) error {
	st, err := os.Lstat(p)
	if err != nil {
		return err
	}
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		t, err := os.Readlink(p)
		if err != nil {
			return err
		}
		return cw.Symlink(name, t)
	case st.IsDir():
		return cw.Dir(name, uint32(st.Mode().Perm()))
	case st.Mode().IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return cw.File(name, uint32(st.Mode().Perm()), st.Size(), bufio.NewReaderSize(f, 1<<20))
	}
	return fmt.Errorf("%s: unsupported file type %s", p, st.Mode())
}

// OverlayFile is one file of a per-run overlay archive.
type OverlayFile struct {
	// Path is the guest path; Src the host file (or Data the content).
	Path string
	Src  string
	Data []byte
	Mode uint32
}

// WriteInitrd writes base followed by an uncompressed overlay archive with
// files to out: one initrd for qemu's -initrd. The overlay stays
// uncompressed because big Go binaries unpack much faster as a plain copy
// than through gzip under TCG.
func WriteInitrd(out, base string, files []OverlayFile) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := os.Open(base)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, b)
	b.Close()
	if err != nil {
		return err
	}
	// The kernel takes an uncompressed archive only at a 4-byte aligned
	// offset; zeros between archives are skipped.
	if rem := n % 4; rem != 0 {
		if _, err := f.Write(make([]byte, 4-rem)); err != nil {
			return err
		}
	}
	cw := NewCPIOWriter(f)
	dirs := map[string]bool{}
	for _, of := range files {
		// Parents first (the base has most; re-adding a directory is
		// harmless).
		var parents []string
		for d := filepath.Dir(strings.TrimPrefix(of.Path, "/")); d != "." && !dirs[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := cw.Dir(parents[i], 0o755); err != nil {
				return err
			}
		}
		mode := of.Mode
		if mode == 0 {
			mode = 0o644
		}
		if of.Src == "" {
			if err := cw.File(of.Path, mode, int64(len(of.Data)), strings.NewReader(string(of.Data))); err != nil {
				return err
			}
			continue
		}
		src, err := os.Open(of.Src)
		if err != nil {
			return err
		}
		st, err := src.Stat()
		if err == nil {
			err = cw.File(of.Path, mode, st.Size(), bufio.NewReaderSize(src, 1<<20))
		}
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// ---- small file helpers ----

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// copyFile copies src (following symlinks) to dst, creating parents.
func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// replaceFile is copyFile over whatever is at dst (e.g. a busybox link).
func replaceFile(src, dst string, mode os.FileMode) error {
	_ = os.Remove(dst)
	return copyFile(src, dst, mode)
}

func replaceSymlink(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	_ = os.Remove(link)
	return os.Symlink(target, link)
}

func hashStrings(ss ...string) string {
	h := sha256.New()
	for _, s := range ss {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}
