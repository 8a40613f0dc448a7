package build

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSelectBinaries(t *testing.T) {
	if _, err := selectBinaries([]string{"kube-apiserver", "nope"}); err == nil {
		t.Fatal("unknown binary: want error")
	}
	got, err := selectBinaries([]string{"echo"})
	if err != nil || len(got) != 1 || got[0].Package != "./cmd/echo" {
		t.Fatalf("selectBinaries(echo) = %v, %v", got, err)
	}
}

func TestHashDirTracksContent(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.go", "package a")
	h1, err := hashDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	write("a.go", "package a // changed")
	h2, _ := hashDir(dir)
	if h1 == h2 {
		t.Fatal("hash unchanged after editing a file")
	}
	write("b.go", "")
	h3, _ := hashDir(dir)
	if h3 == h2 {
		t.Fatal("hash unchanged after adding a file")
	}
}

func TestFindModuleDir(t *testing.T) {
	d, err := FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	if !isE2EModule(d) || filepath.Base(d) != "e2e" {
		t.Fatalf("FindModuleDir() = %s", d)
	}
}

// TestEnsureCaches builds the small echo binary into a temp cache and checks
// that a second call finds it current instead of rebuilding.
func TestEnsureCaches(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping go build in -short mode")
	}
	cache := t.TempDir()
	var progress bytes.Buffer
	res, err := Ensure(Config{CacheDir: cache, Names: []string{"echo"}, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if !isExecutable(res["echo"]) || !strings.Contains(progress.String(), "building echo") {
		t.Fatalf("first Ensure: %v, progress %q", res, progress.String())
	}
	progress.Reset()
	if _, err := Ensure(Config{CacheDir: cache, Names: []string{"echo"}, Progress: &progress}); err != nil {
		t.Fatal(err)
	}
	if progress.Len() != 0 {
		t.Fatalf("second Ensure rebuilt: %q", progress.String())
	}
}
