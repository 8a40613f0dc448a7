package image

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// elfDeps returns a binary's program interpreter ("" for a static binary)
// and the sonames it needs (DT_NEEDED).
func elfDeps(path string) (interp string, needed []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", nil, fmt.Errorf("%s: reading PT_INTERP: %w", path, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	return interp, needed, nil
}

// libSet is the closure of shared libraries some binaries need.
type libSet struct {
	// Libs maps soname to the file providing it.
	Libs map[string]string
	// Interp is the program interpreter path inside the guest
	// (/lib64/ld-linux-x86-64.so.2) and InterpFile the file providing it.
	Interp, InterpFile string
}

// resolveLibs follows DT_NEEDED from bins through every library found by
// find (soname -> file), breadth first. A soname find cannot place is an
// error naming who needs it: a guest tool that fails to start for a missing
// library would be a confusing test failure much later.
func resolveLibs(bins []string, find func(soname string) (string, bool), findInterp func(path string) (string, bool)) (*libSet, error) {
	out := &libSet{Libs: map[string]string{}}
	type item struct{ file, by string }
	queue := make([]item, 0, len(bins))
	for _, b := range bins {
		queue = append(queue, item{b, ""})
	}
	seen := map[string]bool{}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if seen[it.file] {
			continue
		}
		seen[it.file] = true
		interp, needed, err := elfDeps(it.file)
		if err != nil {
			return nil, err
		}
		if interp != "" && out.Interp == "" {
			f, ok := findInterp(interp)
			if !ok {
				return nil, fmt.Errorf("program interpreter %s (of %s) not found", interp, it.file)
			}
			out.Interp, out.InterpFile = interp, f
		} else if interp != "" && interp != out.Interp {
			return nil, fmt.Errorf("%s wants interpreter %s, others %s", it.file, interp, out.Interp)
		}
		sort.Strings(needed)
		for _, so := range needed {
			if _, ok := out.Libs[so]; ok {
				continue
			}
			f, ok := find(so)
			if !ok {
				return nil, fmt.Errorf("shared library %s (needed by %s) not found in the unpacked packages or on the host", so, it.file)
			}
			out.Libs[so] = f
			queue = append(queue, item{f, it.file})
		}
	}
	return out, nil
}

// resolveIn resolves rel inside root, following symlinks (absolute ones
// relative to root, as they would be in the guest). It returns the host
// path of the final regular file.
func resolveIn(root, rel string) (string, error) {
	p := strings.TrimPrefix(filepath.Clean("/"+rel), "/")
	for hops := 0; hops < 40; hops++ {
		full := filepath.Join(root, p)
		st, err := os.Lstat(full)
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink == 0 {
			return full, nil
		}
		target, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			p = strings.TrimPrefix(filepath.Clean(target), "/")
		} else {
			p = strings.TrimPrefix(filepath.Clean("/"+filepath.Join(filepath.Dir(p), target)), "/")
		}
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links in %s", rel, root)
}

// libDirs are where Debian puts shared libraries (relative to a root).
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"}

// libFinder finds sonames in the given roots, in order.
func libFinder(roots ...string) func(string) (string, bool) {
	return func(soname string) (string, bool) {
		for _, r := range roots {
			for _, d := range libDirs {
				if f, err := resolveIn(r, filepath.Join(d, soname)); err == nil {
					return f, true
				}
			}
		}
		return "", false
	}
}

// pathFinder finds an absolute guest path in the given roots, in order.
func pathFinder(roots ...string) func(string) (string, bool) {
	return func(p string) (string, bool) {
		for _, r := range roots {
			if f, err := resolveIn(r, p); err == nil {
				return f, true
			}
		}
		return "", false
	}
}

// ELFInterp returns a binary's program interpreter ("" when it is static)
// and the shared libraries it needs.
func ELFInterp(path string) (string, []string, error) { return elfDeps(path) }
