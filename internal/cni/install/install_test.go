package install

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConflistSingleAndDualStack(t *testing.T) {
	out, err := Conflist(ConflistConfig{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	plugin := got["plugins"].([]any)[0].(map[string]any)
	if got["cniVersion"] != "1.0.0" || got["name"] != "podnet" || plugin["type"] != "podnet" || plugin["subnet"] != "198.18.1.0/24" || len(plugin) != 2 {
		t.Fatalf("minimal conflist:\n%s", out)
	}

	out, err = Conflist(ConflistConfig{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:10:1::/64")},
		IPMasq:       true,
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("2001:db8:10::/56")},
		MTU:          1450,
		DataDir:      "/var/lib/cni/podnet",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"ranges"`, `"subnet": "2001:db8:10:1::/64"`, `"clusterCIDR": "198.18.0.0/16,2001:db8:10::/56"`, `"ipMasq": true`, `"mtu": 1450`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dual-stack conflist lacks %s:\n%s", want, out)
		}
	}
}

func TestConflistRejectsWhatThePluginWould(t *testing.T) {
	_, err := Conflist(ConflistConfig{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err == nil || !strings.Contains(err.Error(), "not inside clusterCIDR") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Conflist(ConflistConfig{}); err == nil {
		t.Fatal("no pod CIDR accepted")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	p := filepath.Join(dir, "10-podnet.conflist")
	changed, err := WriteFileAtomic(p, []byte("one"), 0o644)
	if err != nil || !changed {
		t.Fatalf("first write = %v, %v", changed, err)
	}
	changed, err = WriteFileAtomic(p, []byte("one"), 0o644)
	if err != nil || changed {
		t.Fatalf("same content = %v, %v; want unchanged", changed, err)
	}
	if changed, err = WriteFileAtomic(p, []byte("two"), 0o644); err != nil || !changed {
		t.Fatalf("new content = %v, %v", changed, err)
	}
	data, _ := os.ReadFile(p)
	entries, _ := os.ReadDir(dir)
	if string(data) != "two" || len(entries) != 1 {
		t.Fatalf("content %q, %d entries (temporaries left?)", data, len(entries))
	}
}

func TestInstallBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "podnet")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho v1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "opt", "cni", "bin")
	changed, err := InstallBinary(src, bin, "podnet")
	if err != nil || !changed {
		t.Fatalf("install = %v, %v", changed, err)
	}
	st, err := os.Stat(filepath.Join(bin, "podnet"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed mode %v, %v", st.Mode(), err)
	}
	if changed, err := InstallBinary(src, bin, "podnet"); err != nil || changed {
		t.Fatalf("reinstall of same binary = %v, %v; want unchanged", changed, err)
	}
	os.WriteFile(src, []byte("#!/bin/sh\necho v2\n"), 0o700)
	if changed, err := InstallBinary(src, bin, "podnet"); err != nil || !changed {
		t.Fatalf("upgrade = %v, %v", changed, err)
	}
	if data, _ := os.ReadFile(filepath.Join(bin, "podnet")); !strings.Contains(string(data), "v2") {
		t.Fatalf("upgrade did not land: %q", data)
	}
	if _, err := InstallBinary(filepath.Join(t.TempDir(), "missing"), bin, "podnet"); err == nil {
		t.Fatal("missing source accepted")
	}
}
