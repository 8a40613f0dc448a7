package ipt_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

var ctx = context.Background()

func forEachKernel(t *testing.T, fn func(t *testing.T, f model.Family, b ipt.Backend)) {
	for _, b := range backends {
		for _, f := range families {
			t.Run(fmt.Sprintf("%s/%s", b, f), func(t *testing.T) { fn(t, f, b) })
		}
	}
}

// TestKernelStaysInNamespace checks the mechanism every other kernel test
// relies on: iptables binaries exec'd from a thread switched with ns.Do run in
// that namespace, not in the root one.
func TestKernelStaysInNamespace(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		before := rootSnapshot()
		const chain = "KPR-NSCHECK"
		if existed, err := k.EnsureChain(ipt.TableFilter, chain); err != nil || existed {
			t.Fatalf("EnsureChain = %v, %v", existed, err)
		}
		if err := k.Restore(ctx, []byte("*filter\n:KPR-NSCHECK2 - [0:0]\nCOMMIT\n")); err != nil {
			t.Fatal(err)
		}
		inNS := nsSave(t, n, f, b, ipt.TableFilter)
		for _, c := range []string{chain, "KPR-NSCHECK2"} {
			if !strings.Contains(inNS, ":"+c+" ") {
				t.Errorf("%s missing from the namespace:\n%s", c, inNS)
			}
		}
		after := rootSnapshot()
		if strings.Contains(after, "KPR-NSCHECK") || after != before {
			t.Fatalf("root namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

func TestKernelRestoreSaveList(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		a := familyAddrs(f)
		batch := a.expand(`*nat
:KPR-SERVICES - [0:0]
:KPR-SVC-A - [0:0]
-A KPR-SERVICES -d {SVC1} -p tcp -m comment --comment "ns1/svc1:http cluster IP" -m tcp --dport 80 -j KPR-SVC-A
-A KPR-SVC-A -p tcp -m tcp -j DNAT --to-destination {EP1}
COMMIT
*filter
:KPR-FILTER - [0:0]
-A KPR-FILTER -d {SVC2} -p tcp -m tcp --dport 80 -j REJECT --reject-with {REJECT}
COMMIT
`)
		if err := k.Restore(ctx, []byte(batch)); err != nil {
			t.Fatal(err)
		}
		out, err := k.SaveTable(ctx, ipt.TableNAT)
		if err != nil {
			t.Fatal(err)
		}
		save := normalizeSave(out)
		for _, want := range []string{
			":KPR-SERVICES - [0:0]",
			a.expand(`-A KPR-SERVICES -d {SVC1} -p tcp -m comment --comment "ns1/svc1:http cluster IP" -m tcp --dport 80 -j KPR-SVC-A`),
			a.expand("-A KPR-SVC-A -p tcp -m tcp -j DNAT --to-destination {EP1}"),
		} {
			if !strings.Contains(save, want+"\n") {
				t.Errorf("SaveTable(nat) lacks %q:\n%s", want, save)
			}
		}
		if save != nsSave(t, n, f, b, ipt.TableNAT) {
			t.Errorf("SaveTable differs from the tool's own save")
		}
		chains, err := k.ListChains(ctx, ipt.TableNAT)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "KPR-SERVICES", "KPR-SVC-A"}; !slices.Equal(chains, want) {
			t.Errorf("ListChains(nat) = %q, want %q", chains, want)
		}
		for chain, want := range map[string]bool{"KPR-FILTER": true, "KPR-SERVICES": false} {
			if ok, err := k.ChainExists(ipt.TableFilter, chain); err != nil || ok != want {
				t.Errorf("ChainExists(filter, %s) = %v, %v", chain, ok, err)
			}
		}
		if !k.HasRandomFully() {
			t.Error("iptables 1.8 supports --random-fully")
		}
	})
}

func TestKernelSingleRuleOpsIdempotent(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		for i := range 2 {
			existed, err := k.EnsureChain(ipt.TableNAT, "KPR-SERVICES")
			if err != nil || existed != (i == 1) {
				t.Fatalf("EnsureChain #%d = %v, %v", i, existed, err)
			}
		}
		jump := []string{"-m", "comment", "--comment", "kpr service portals", "-j", "KPR-SERVICES"}
		n.MustExec(toolName(f, b), "-w", "5", "-t", "nat", "-A", "PREROUTING", "-j", "RETURN")
		for i := range 2 {
			existed, err := k.EnsureRule(ipt.Prepend, ipt.TableNAT, "PREROUTING", jump...)
			if err != nil || existed != (i == 1) {
				t.Fatalf("EnsureRule(prepend) #%d = %v, %v", i, existed, err)
			}
			existed, err = k.EnsureRule(ipt.Append, ipt.TableNAT, "OUTPUT", jump...)
			if err != nil || existed != (i == 1) {
				t.Fatalf("EnsureRule(append) #%d = %v, %v", i, existed, err)
			}
		}
		save := nsSave(t, n, f, b, ipt.TableNAT)
		want := "-A PREROUTING -m comment --comment \"kpr service portals\" -j KPR-SERVICES\n-A PREROUTING -j RETURN\n-A OUTPUT -m comment --comment \"kpr service portals\" -j KPR-SERVICES\n"
		if !strings.Contains(save, want) {
			t.Fatalf("rules not in place (prepend must come first):\n%s", save)
		}
		if ok, err := k.RuleExists(ipt.TableNAT, "OUTPUT", jump...); !ok || err != nil {
			t.Fatalf("RuleExists = %v, %v", ok, err)
		}
		if ok, err := k.RuleExists(ipt.TableNAT, "KPR-NOPE", "-j", "RETURN"); ok || err != nil {
			t.Fatalf("RuleExists(missing chain) = %v, %v", ok, err)
		}
		// Referenced: cannot be deleted.
		if err := k.DeleteChain(ipt.TableNAT, "KPR-SERVICES"); err == nil {
			t.Fatal("deleted a referenced chain")
		}
		for range 2 {
			if err := k.DeleteRule(ipt.TableNAT, "PREROUTING", jump...); err != nil {
				t.Fatal(err)
			}
			if err := k.DeleteRule(ipt.TableNAT, "OUTPUT", jump...); err != nil {
				t.Fatal(err)
			}
		}
		if err := k.DeleteRule(ipt.TableNAT, "KPR-NOPE", "-j", "RETURN"); err != nil {
			t.Fatalf("DeleteRule(missing chain): %v", err)
		}
		// `-C` itself fails for a jump to a missing chain; DeleteRule must
		// still treat it as "nothing to delete".
		if err := k.DeleteRule(ipt.TableNAT, "PREROUTING", "-j", "KPR-GONE"); err != nil {
			t.Fatalf("DeleteRule(jump to missing chain): %v", err)
		}
		n.MustExec(toolName(f, b), "-w", "5", "-t", "nat", "-A", "KPR-SERVICES", "-j", "RETURN")
		if err := k.DeleteChain(ipt.TableNAT, "KPR-SERVICES"); err == nil {
			t.Fatal("deleted a non-empty chain")
		}
		for range 2 {
			if err := k.FlushChain(ipt.TableNAT, "KPR-SERVICES"); err != nil {
				t.Fatal(err)
			}
			if err := k.DeleteChain(ipt.TableNAT, "KPR-SERVICES"); err != nil {
				t.Fatal(err)
			}
		}
		if err := k.FlushChain(ipt.TableNAT, "KPR-NOPE"); err != nil {
			t.Fatalf("FlushChain(missing): %v", err)
		}
		if strings.Contains(nsSave(t, n, f, b, ipt.TableNAT), "KPR-SERVICES") {
			t.Fatal("KPR-SERVICES left behind")
		}
	})
}

func TestKernelRestoreError(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		good := "*filter\n:KPR-A - [0:0]\n:KPR-B - [0:0]\n-A KPR-A -j KPR-B\nCOMMIT\n"
		if err := k.Restore(ctx, []byte(good)); err != nil {
			t.Fatal(err)
		}
		before := nsSave(t, n, f, b, ipt.TableFilter)
		cases := []struct {
			name, data string
			line       int
		}{
			{"append to undeclared chain", "*filter\n:KPR-A - [0:0]\n-A KPR-A -j RETURN\n-A KPR-NOPE -j RETURN\n-A KPR-A -j RETURN\nCOMMIT\n", 4},
			{"delete referenced chain", "*filter\n:KPR-B - [0:0]\n-X KPR-B\nCOMMIT\n", 3},
			{"bad match", "*filter\n:KPR-A - [0:0]\n-A KPR-A -m nosuchmatch -j RETURN\nCOMMIT\n", 3},
		}
		for _, c := range cases {
			for _, test := range []bool{false, true} {
				restore := k.Restore
				if test {
					restore = k.RestoreTest
				}
				err := restore(ctx, []byte(c.data))
				if test && b == ipt.BackendNFT && c.name != "bad match" {
					// nft's --test only parses; documented on RestoreTest.
					if err != nil {
						t.Logf("%s: nft --test found it after all: %v", c.name, err)
					}
					continue
				}
				var re *ipt.RestoreError
				if !errors.As(err, &re) {
					t.Fatalf("%s (test=%v): want *RestoreError, got %v", c.name, test, err)
				}
				if re.Line != c.line {
					t.Errorf("%s (test=%v): line %d, want %d: %v", c.name, test, re.Line, c.line, re)
				}
				ctxLines := ipt.ContextLines([]byte(c.data), re.Line, 1)
				if len(ctxLines) == 0 || !slices.ContainsFunc(ctxLines, func(s string) bool { return strings.HasPrefix(s, "> ") }) {
					t.Errorf("%s: ContextLines = %q", c.name, ctxLines)
				}
			}
		}
		if after := nsSave(t, n, f, b, ipt.TableFilter); after != before {
			t.Fatalf("failed restores changed state:\n%s\nwant:\n%s", after, before)
		}
		// RestoreTest of a valid batch commits nothing.
		if err := k.RestoreTest(ctx, []byte("*filter\n:KPR-T - [0:0]\nCOMMIT\n")); err != nil {
			t.Fatal(err)
		}
		if ok, _ := k.ChainExists(ipt.TableFilter, "KPR-T"); ok {
			t.Fatal("RestoreTest committed")
		}
	})
}

func TestKernelCanary(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		if ok, err := ipt.CanaryIntact(k); ok || err != nil {
			t.Fatalf("intact before creation: %v, %v", ok, err)
		}
		for range 2 {
			if err := ipt.EnsureCanary(k); err != nil {
				t.Fatal(err)
			}
		}
		for _, table := range ipt.DefaultCanaryTables() {
			save := nsSave(t, n, f, b, table)
			if strings.Count(save, "-A KPR-CANARY -m comment --comment kpr-canary -j RETURN\n") != 1 {
				t.Fatalf("%s: want exactly one canary rule:\n%s", table, save)
			}
		}
		if ok, err := ipt.CanaryIntact(k); !ok || err != nil {
			t.Fatalf("intact = %v, %v", ok, err)
		}
		// An external flush of one table keeps the chain but loses the rule.
		n.MustExec(toolName(f, b), "-w", "5", "-t", "nat", "-F")
		if ok, err := k.ChainExists(ipt.TableNAT, ipt.CanaryChain); !ok || err != nil {
			t.Fatalf("flush removed the chain? %v %v", ok, err)
		}
		if ok, err := ipt.CanaryIntact(k); ok || err != nil {
			t.Fatalf("intact after nat flush = %v, %v", ok, err)
		}
		if err := ipt.EnsureCanary(k); err != nil {
			t.Fatal(err)
		}
		if ok, _ := ipt.CanaryIntact(k); !ok {
			t.Fatal("canary not repaired")
		}
		// Flush and delete all chains of filter.
		n.MustExec(toolName(f, b), "-w", "5", "-t", "filter", "-F")
		n.MustExec(toolName(f, b), "-w", "5", "-t", "filter", "-X")
		if ok, err := ipt.CanaryIntact(k); ok || err != nil {
			t.Fatalf("intact after filter -F -X = %v, %v", ok, err)
		}
	})
}

// systemDefault is what `iptables --version` reports.
func systemDefault(t *testing.T) ipt.Backend {
	out, err := exec.Command("iptables", "--version").Output()
	if err != nil {
		t.Skipf("skipping: iptables --version: %v", err)
	}
	if strings.Contains(string(out), "nf_tables") {
		return ipt.BackendNFT
	}
	return ipt.BackendLegacy
}

func TestKernelDetectBackend(t *testing.T) {
	netns.RequireRoot(t)
	for _, b := range backends {
		for _, f := range families {
			requireBackend(t, f, b)
		}
	}
	def := systemDefault(t)
	other := ipt.BackendLegacy
	if def == ipt.BackendLegacy {
		other = ipt.BackendNFT
	}
	detect := func(t *testing.T, n *netns.NS, f model.Family) (ipt.Backend, string, []observer.LoggedEntry) {
		t.Helper()
		core, logs := observer.New(zap.InfoLevel)
		var (
			got    ipt.Backend
			reason string
			err    error
		)
		if derr := n.Do(func() error {
			got, reason, err = ipt.DetectBackend(ctx, f, "auto", zap.New(core))
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		if err != nil {
			t.Fatal(err)
		}
		return got, reason, logs.All()
	}
	for _, f := range families {
		t.Run(f.String(), func(t *testing.T) {
			n := netns.New(t, "kpr-det")
			got, reason, logs := detect(t, n, f)
			if got != def || !strings.Contains(reason, "system default") {
				t.Fatalf("fresh namespace: got %s (%s), want system default %s", got, reason, def)
			}
			if len(logs) != 1 || logs[0].ContextMap()["iptables_backend"] != string(got) || logs[0].ContextMap()["reason"] != reason {
				t.Fatalf("choice not logged with its reason: %+v", logs)
			}

			// More rules in the other backend win over the system default.
			n.MustExec(toolName(f, other), "-w", "5", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT")
			if got, reason, _ := detect(t, n, f); got != other || !strings.Contains(reason, "more rules") {
				t.Fatalf("rules in %s: got %s (%s)", other, got, reason)
			}

			// A kubelet hint in the legacy mangle table beats rule counts.
			for range 3 {
				n.MustExec(toolName(f, ipt.BackendNFT), "-w", "5", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT")
			}
			n.MustExec(toolName(f, ipt.BackendLegacy), "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
			if got, reason, _ := detect(t, n, f); got != ipt.BackendLegacy || !strings.Contains(reason, "KUBE-IPTABLES-HINT") {
				t.Fatalf("legacy hint: got %s (%s)", got, reason)
			}

			// The same for nft, in a fresh namespace, with the hint only in
			// the other family's table.
			n2 := netns.New(t, "kpr-det")
			otherFam := model.IPv6
			if f == model.IPv6 {
				otherFam = model.IPv4
			}
			for range 3 {
				n2.MustExec(toolName(f, ipt.BackendLegacy), "-w", "5", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT")
			}
			n2.MustExec(toolName(otherFam, ipt.BackendNFT), "-w", "5", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
			if got, reason, _ := detect(t, n2, f); got != ipt.BackendNFT || !strings.Contains(reason, "KUBE-KUBELET-CANARY") {
				t.Fatalf("nft hint: got %s (%s)", got, reason)
			}
		})
	}
}
