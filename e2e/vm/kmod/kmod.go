// Package kmod reads a modules.dep file (as `depmod` writes it) and answers
// the two questions the VM harness has: which module files a set of modules
// needs (to put them in the initramfs), and in which order to load them (in
// the guest, where the agent calls finit_module itself). Pure logic, shared
// by the host-side image builder and the guest agent.
package kmod

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Index is a parsed modules.dep: every module's file (relative to
// /lib/modules/<release>) and the files it depends on.
type Index struct {
	files map[string]string   // name -> relative path
	deps  map[string][]string // relative path -> dependency paths, as listed
}

// Name is a module's canonical name for a file path or a user-given name:
// base name without ".ko" (and compression suffix), '-' as '_', as the
// kernel names modules.
func Name(s string) string {
	s = path.Base(s)
	for _, suf := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, suf)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// Parse reads modules.dep ("path: dep dep ...", one module per line).
func Parse(r io.Reader) (*Index, error) {
	ix := &Index{files: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		file, rest, ok := strings.Cut(text, ":")
		if !ok || strings.TrimSpace(file) == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"path: deps\", got %q", line, text)
		}
		file = strings.TrimSpace(file)
		name := Name(file)
		if prev, dup := ix.files[name]; dup && prev != file {
			return nil, fmt.Errorf("modules.dep line %d: module %s listed twice (%s and %s)", line, name, prev, file)
		}
		ix.files[name] = file
		ix.deps[file] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return ix, nil
}

// Has reports whether the index knows module name.
func (ix *Index) Has(name string) bool { _, ok := ix.files[Name(name)]; return ok }

// File returns module name's path relative to the modules directory.
func (ix *Index) File(name string) (string, bool) {
	f, ok := ix.files[Name(name)]
	return f, ok
}

// Names returns every module name, sorted.
func (ix *Index) Names() []string {
	out := make([]string, 0, len(ix.files))
	for n := range ix.files {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Files returns the files of the named modules and of everything they
// depend on, sorted. An unknown name is an error.
func (ix *Index) Files(names ...string) ([]string, error) {
	set := map[string]bool{}
	for _, n := range names {
		f, ok := ix.files[Name(n)]
		if !ok {
			return nil, fmt.Errorf("module %s is not in modules.dep", n)
		}
		set[f] = true
		for _, d := range ix.deps[f] {
			set[d] = true
		}
	}
	out := make([]string, 0, len(set))
	for f := range set {
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}

// LoadOrder returns the files to load, in order, so that the named modules
// are loaded in the given order, each after all its dependencies, and each
// file once. depmod lists a module's full dependency closure; loading each
// dependency's own dependencies first gives a valid order. Dependencies
// that are not in the index (a modules.dep cut to a subset) are an error.
func (ix *Index) LoadOrder(names ...string) ([]string, error) {
	var out []string
	done := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(file string) error
	visit = func(file string) error {
		if done[file] {
			return nil
		}
		if visiting[file] {
			return fmt.Errorf("dependency cycle through %s", file)
		}
		deps, ok := ix.deps[file]
		if !ok {
			return fmt.Errorf("%s is needed but not in modules.dep", file)
		}
		visiting[file] = true
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		visiting[file] = false
		done[file] = true
		out = append(out, file)
		return nil
	}
	for _, n := range names {
		f, ok := ix.files[Name(n)]
		if !ok {
			return nil, fmt.Errorf("module %s is not in modules.dep", n)
		}
		if err := visit(f); err != nil {
			return nil, fmt.Errorf("module %s: %w", n, err)
		}
	}
	return out, nil
}
