package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveInFollowsSymlinksInsideTheRoot(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "lib/x86_64-linux-gnu"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "lib64"), 0o755))
	must(os.WriteFile(filepath.Join(root, "lib/x86_64-linux-gnu/libfoo.so.1.2.3"), []byte("foo"), 0o644))
	// Relative link, as in library packages.
	must(os.Symlink("libfoo.so.1.2.3", filepath.Join(root, "lib/x86_64-linux-gnu/libfoo.so.1")))
	// Absolute link, as libc6's lib64/ld-linux-x86-64.so.2: it must
	// resolve inside root, not on the host.
	must(os.Symlink("/lib/x86_64-linux-gnu/libfoo.so.1", filepath.Join(root, "lib64/foo")))
	must(os.Symlink("loop", filepath.Join(root, "loop")))

	for _, rel := range []string{"lib/x86_64-linux-gnu/libfoo.so.1", "/lib64/foo"} {
		got, err := resolveIn(root, rel)
		if err != nil {
			t.Fatalf("resolveIn(%s): %v", rel, err)
		}
		if want := filepath.Join(root, "lib/x86_64-linux-gnu/libfoo.so.1.2.3"); got != want {
			t.Errorf("resolveIn(%s) = %s, want %s", rel, got, want)
		}
	}
	if _, err := resolveIn(root, "loop"); err == nil {
		t.Error("symlink loop: no error")
	}
	if f, ok := libFinder(t.TempDir(), root)("libfoo.so.1"); !ok || !strings.HasSuffix(f, "libfoo.so.1.2.3") {
		t.Errorf("libFinder: %s %v", f, ok)
	}
}

// A dynamically linked host binary: its interpreter and libc are found on
// the host; with a finder that knows nothing, the error names the library
// and who needs it.
func TestResolveLibs(t *testing.T) {
	bin := "/bin/true"
	interp, needed, err := ELFInterp(bin)
	if err != nil || interp == "" || len(needed) == 0 {
		t.Skipf("%s is not a dynamically linked ELF here (%v)", bin, err)
	}
	libs, err := resolveLibs([]string{bin}, libFinder("/"), pathFinder("/"))
	if err != nil {
		t.Fatal(err)
	}
	if libs.Interp != interp || libs.InterpFile == "" {
		t.Errorf("interpreter %q (%s), want %q", libs.Interp, libs.InterpFile, interp)
	}
	for _, so := range needed {
		if libs.Libs[so] == "" {
			t.Errorf("%s not resolved: %v", so, libs.Libs)
		}
	}
	none := func(string) (string, bool) { return "", false }
	_, err = resolveLibs([]string{bin}, none, pathFinder("/"))
	if err == nil || !strings.Contains(err.Error(), needed[0]) || !strings.Contains(err.Error(), bin) {
		t.Errorf("missing library: err = %v, want it to name %s and %s", err, needed[0], bin)
	}
}

// The harness refuses dynamically linked programs for the guest; a Go
// binary built with CGO_ENABLED=0 has no interpreter.
func TestELFInterpOfAStaticFile(t *testing.T) {
	if _, _, err := ELFInterp(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: no error")
	}
	notELF := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ELFInterp(notELF); err == nil {
		t.Error("not an ELF file: no error")
	}
}
