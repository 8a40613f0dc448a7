package masq_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/cni/masq"
	fakemasq "github.com/kpr-proxy/kpr/internal/cni/masq/testing"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

func policy4() masq.Policy {
	return masq.Policy{
		PodSubnet:    netip.MustParsePrefix("198.18.1.0/24"),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("2001:db8:10::/56")},
	}
}

func TestChainRules(t *testing.T) {
	p := policy4()
	p.RandomFully = true
	var got []string
	for _, r := range masq.ChainRules(p) {
		got = append(got, strings.Join(r, " "))
	}
	want := []string{
		"! -s 198.18.1.0/24 -m comment --comment podnet: source is not a pod of this node -j RETURN",
		"-d 198.18.0.0/16 -m comment --comment podnet: to the cluster, keep pod source -j RETURN",
		"-d 224.0.0.0/4 -m comment --comment podnet: multicast is never masqueraded -j RETURN",
		"-m comment --comment podnet: leaving the cluster -j MASQUERADE --random-fully",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEnsureWithFake(t *testing.T) {
	ft := fakemasq.NewFakeTable()
	changed, err := masq.Ensure(ft, policy4())
	if err != nil || !changed {
		t.Fatalf("first Ensure = %v, %v", changed, err)
	}
	if n := len(ft.Rules("nat", masq.Chain)); n != 4 {
		t.Fatalf("chain has %d rules, want 4", n)
	}
	if n := len(ft.Rules("nat", "POSTROUTING")); n != 1 {
		t.Fatalf("POSTROUTING has %d rules, want 1", n)
	}
	before := ft.Mutations
	changed, err = masq.Ensure(ft, policy4())
	if err != nil || changed || ft.Mutations != before {
		t.Fatalf("second Ensure = %v, %v, %d mutations; want no change", changed, err, ft.Mutations-before)
	}
	// A changed cluster CIDR rewrites the chain, still one jump.
	p := policy4()
	p.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}
	if changed, err := masq.Ensure(ft, p); err != nil || !changed {
		t.Fatalf("Ensure with new policy = %v, %v", changed, err)
	}
	if r := ft.Rules("nat", masq.Chain); !strings.Contains(r[1], "198.18.0.0/15") || len(r) != 4 {
		t.Fatalf("chain not rewritten: %v", r)
	}
	if n := len(ft.Rules("nat", "POSTROUTING")); n != 1 {
		t.Fatalf("POSTROUTING has %d rules, want 1", n)
	}
	if err := masq.Teardown(ft); err != nil {
		t.Fatal(err)
	}
	if ok, _ := ft.ChainExists("nat", masq.Chain); ok || len(ft.Rules("nat", "POSTROUTING")) != 0 {
		t.Fatal("Teardown left state")
	}
}

// TestEnsureKernel runs the real iptables/ip6tables inside a throwaway
// network namespace: Ensure must recognise its own rules in real `-S`
// output (no rewrite on the second call), or every pod ADD would flush the
// chain.
func TestEnsureKernel(t *testing.T) {
	netns.RequireTool(t, "iptables")
	netns.RequireTool(t, "ip6tables")
	n := netns.New(t, "pnm")
	for _, tc := range []struct {
		name string
		is6  bool
		p    masq.Policy
	}{
		{"ipv4", false, policy4()},
		{"ipv6", true, masq.Policy{
			PodSubnet:    netip.MustParsePrefix("2001:db8:10:1::/64"),
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("2001:db8:10::/56")},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := n.Do(func() error {
				tbl, err := masq.NewTable(tc.is6)
				if err != nil {
					return err
				}
				tc.p.RandomFully = tbl.HasRandomFully()
				if changed, err := masq.Ensure(tbl, tc.p); err != nil || !changed {
					t.Errorf("first Ensure = %v, %v", changed, err)
				}
				if changed, err := masq.Ensure(tbl, tc.p); err != nil || changed {
					t.Errorf("second Ensure = %v, %v; want no change", changed, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			save := "iptables-save"
			if tc.is6 {
				save = "ip6tables-save"
			}
			out := n.MustExec(save, "-t", "nat")
			if strings.Count(out, "-j "+masq.Chain) != 1 || strings.Count(out, "-A "+masq.Chain) != 4 {
				t.Fatalf("%s:\n%s", save, out)
			}
			if !strings.Contains(out, "-A "+masq.Chain+" ! -s "+tc.p.PodSubnet.String()) {
				t.Fatalf("pod subnet rule missing:\n%s", out)
			}
			if err := n.Do(func() error {
				tbl, err := masq.NewTable(tc.is6)
				if err != nil {
					return err
				}
				return masq.Teardown(tbl)
			}); err != nil {
				t.Fatal(err)
			}
			if out := n.MustExec(save, "-t", "nat"); strings.Contains(out, masq.Chain) {
				t.Fatalf("Teardown left:\n%s", out)
			}
		})
	}
}
