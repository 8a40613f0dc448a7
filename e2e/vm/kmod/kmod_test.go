package kmod

import (
	"slices"
	"strings"
	"testing"
)

// A cut of Debian 6.1's modules.dep: ip_vs needs nf_conntrack (which needs
// the defrag modules and libcrc32c), listed as depmod does, full closure
// per line.
const dep = `kernel/lib/libcrc32c.ko:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko:
kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/crypto/crc32c_generic.ko:
kernel/drivers/char/hw_random/virtio-rng.ko:
`

func parse(t *testing.T, s string) *Index {
	t.Helper()
	ix, err := Parse(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"ip_vs_rr.ko.xz":  "ip_vs_rr",
		"virtio-rng":      "virtio_rng",
		"crc32c_generic":  "crc32c_generic",
		"x/nf_nat.ko.zst": "nf_nat",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoadOrderPutsDependenciesFirstOnce(t *testing.T) {
	ix := parse(t, dep)
	got, err := ix.LoadOrder("crc32c_generic", "ip_vs_rr", "ip_vs", "nf_conntrack")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range got {
		if _, dup := pos[f]; dup {
			t.Fatalf("%s loaded twice: %v", f, got)
		}
		pos[f] = i
	}
	if got[0] != "kernel/crypto/crc32c_generic.ko" {
		t.Errorf("first = %s, want crc32c_generic (the order given comes first)", got[0])
	}
	if len(got) != 7 {
		t.Errorf("got %d files, want 7: %v", len(got), got)
	}
	before := func(a, b string) {
		if pos["kernel/"+a] >= pos["kernel/"+b] {
			t.Errorf("%s must load before %s: %v", a, b, got)
		}
	}
	before("lib/libcrc32c.ko", "net/netfilter/nf_conntrack.ko")
	before("net/ipv4/netfilter/nf_defrag_ipv4.ko", "net/netfilter/nf_conntrack.ko")
	before("net/netfilter/nf_conntrack.ko", "net/netfilter/ipvs/ip_vs.ko")
	before("net/netfilter/ipvs/ip_vs.ko", "net/netfilter/ipvs/ip_vs_rr.ko")
}

func TestFilesIsTheClosure(t *testing.T) {
	ix := parse(t, dep)
	got, err := ix.Files("virtio_rng", "ip_vs")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/char/hw_random/virtio-rng.ko",
		"kernel/lib/libcrc32c.ko",
		"kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko",
		"kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko",
		"kernel/net/netfilter/ipvs/ip_vs.ko",
		"kernel/net/netfilter/nf_conntrack.ko",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Files = %v\nwant %v", got, want)
	}
	if !ix.Has("virtio-rng") || ix.Has("ip_vs_sh") {
		t.Error("Has: wrong answer")
	}
}

func TestErrors(t *testing.T) {
	ix := parse(t, dep)
	if _, err := ix.LoadOrder("ip_vs_sh"); err == nil || !strings.Contains(err.Error(), "ip_vs_sh") {
		t.Errorf("unknown module: err = %v", err)
	}
	if _, err := ix.Files("nope"); err == nil {
		t.Error("Files of an unknown module: no error")
	}
	// A subset whose dependency was left out.
	cut := parse(t, "kernel/a.ko: kernel/b.ko\n")
	if _, err := cut.LoadOrder("a"); err == nil || !strings.Contains(err.Error(), "kernel/b.ko") {
		t.Errorf("missing dependency: err = %v", err)
	}
	cyc := parse(t, "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
	if _, err := cyc.LoadOrder("a"); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: err = %v", err)
	}
	for _, bad := range []string{"no colon here\n", ": x.ko\n", "kernel/a.ko:\nkernel/other/a.ko:\n"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}
