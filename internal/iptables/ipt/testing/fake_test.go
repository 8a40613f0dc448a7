package ipttest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
)

var ctx = context.Background()

func mustRestore(t *testing.T, f *FakeIPTables, data string) {
	t.Helper()
	if err := f.Restore(ctx, []byte(data)); err != nil {
		t.Fatalf("restore: %v\n%s", err, data)
	}
}

// restoreErr restores data, wants a *ipt.RestoreError at line, and returns it.
func restoreErr(t *testing.T, f *FakeIPTables, data string, line int) *ipt.RestoreError {
	t.Helper()
	err := f.Restore(ctx, []byte(data))
	var re *ipt.RestoreError
	if !errors.As(err, &re) {
		t.Fatalf("want *RestoreError, got %v\n%s", err, data)
	}
	if re.Line != line {
		t.Fatalf("error at line %d, want %d: %v", re.Line, line, re)
	}
	return re
}

func wantSave(t *testing.T, f *FakeIPTables, table ipt.Table, want string) {
	t.Helper()
	if got := string(f.Save(table)); got != want {
		t.Fatalf("save %s:\n%s\nwant:\n%s", table, got, want)
	}
}

const base = `*nat
:KPR-SERVICES - [0:0]
:KPR-SVC-A - [0:0]
:KPR-SEP-1 - [0:0]
:KPR-SEP-2 - [0:0]
-A PREROUTING -m comment --comment "kpr service portals" -j KPR-SERVICES
-A KPR-SERVICES -d 198.19.192.10/32 -p tcp -m tcp --dport 80 -j KPR-SVC-A
-A KPR-SVC-A -m statistic --mode random --probability 0.50000000000 -j KPR-SEP-1
-A KPR-SVC-A -j KPR-SEP-2
-A KPR-SEP-1 -p tcp -m tcp -j DNAT --to-destination 198.18.1.2:8080
-A KPR-SEP-2 -p tcp -m tcp -j DNAT --to-destination 198.18.2.2:8080
COMMIT
*filter
:KPR-FORWARD - [0:0]
-A FORWARD -j KPR-FORWARD
-A KPR-FORWARD -m comment --comment kpr-forward -j ACCEPT
COMMIT
`

const baseNAT = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KPR-SEP-1 - [0:0]
:KPR-SEP-2 - [0:0]
:KPR-SERVICES - [0:0]
:KPR-SVC-A - [0:0]
-A PREROUTING -m comment --comment "kpr service portals" -j KPR-SERVICES
-A KPR-SEP-1 -p tcp -m tcp -j DNAT --to-destination 198.18.1.2:8080
-A KPR-SEP-2 -p tcp -m tcp -j DNAT --to-destination 198.18.2.2:8080
-A KPR-SERVICES -d 198.19.192.10/32 -p tcp -m tcp --dport 80 -j KPR-SVC-A
-A KPR-SVC-A -m statistic --mode random --probability 0.50000000000 -j KPR-SEP-1
-A KPR-SVC-A -j KPR-SEP-2
COMMIT
`

func TestEmptyTablesHaveBuiltinChains(t *testing.T) {
	f := New(model.IPv4)
	wantSave(t, f, ipt.TableFilter, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
	wantSave(t, f, ipt.TableRaw, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
	chains, err := f.ListChains(ctx, ipt.TableMangle)
	if err != nil || !slices.Equal(chains, []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}) {
		t.Fatalf("mangle chains %v %v", chains, err)
	}
	if _, err := f.SaveTable(ctx, "bogus"); err == nil {
		t.Fatal("unknown table accepted")
	}
}

func TestRestoreAndSave(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, base)
	wantSave(t, f, ipt.TableNAT, baseNAT)
	got, err := f.SaveTable(ctx, ipt.TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	want := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KPR-FORWARD - [0:0]\n" +
		"-A FORWARD -j KPR-FORWARD\n-A KPR-FORWARD -m comment --comment kpr-forward -j ACCEPT\nCOMMIT\n"
	if string(got) != want {
		t.Fatalf("filter:\n%s", got)
	}
	// Restoring the same batch again rewrites the user chains (declarations
	// flush them) but appends to built-in PREROUTING a second time: --noflush
	// never flushes built-in chains. That is why the proxy manages its jumps
	// from built-in chains with EnsureRule, not in the batch.
	mustRestore(t, f, base)
	wantSave(t, f, ipt.TableNAT, strings.Replace(baseNAT, "-A PREROUTING", "-A PREROUTING -m comment --comment \"kpr service portals\" -j KPR-SERVICES\n-A PREROUTING", 1))
	if err := f.DeleteRule(ipt.TableNAT, "PREROUTING", "-m", "comment", "--comment", "kpr service portals", "-j", "KPR-SERVICES"); err != nil {
		t.Fatal(err)
	}
	wantSave(t, f, ipt.TableNAT, baseNAT)
	// The saved output restores to the same state (round trip).
	g := New(model.IPv4)
	mustRestore(t, g, string(f.Save(ipt.TableNAT)))
	wantSave(t, g, ipt.TableNAT, baseNAT)
}

func TestDeclareFlushesUserChainButNotBuiltin(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, base)
	mustRestore(t, f, "*nat\n:PREROUTING ACCEPT [0:0]\n:KPR-SVC-A - [0:0]\n-A KPR-SVC-A -j KPR-SEP-1\nCOMMIT\n")
	if rules, _ := f.Rules(ipt.TableNAT, "KPR-SVC-A"); !slices.Equal(rules, []string{"-j KPR-SEP-1"}) {
		t.Fatalf("KPR-SVC-A not flushed and rewritten: %q", rules)
	}
	if rules, _ := f.Rules(ipt.TableNAT, "PREROUTING"); len(rules) != 1 {
		t.Fatalf("declaring built-in PREROUTING must not flush it: %q", rules)
	}
	// A policy on a built-in chain is set; "-" keeps it.
	mustRestore(t, f, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
	mustRestore(t, f, "*filter\n:FORWARD - [0:0]\nCOMMIT\n")
	if !strings.Contains(string(f.Save(ipt.TableFilter)), ":FORWARD DROP [0:0]\n") {
		t.Fatalf("policy lost:\n%s", f.Save(ipt.TableFilter))
	}
	restoreErr(t, f, "*filter\n:KPR-X ACCEPT [0:0]\nCOMMIT\n", 2)
	restoreErr(t, f, "*filter\n:INPUT MAYBE [0:0]\nCOMMIT\n", 2)
}

func TestDeleteChain(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, base)

	// Referenced by KPR-SVC-A (even though empty after the declaration).
	re := restoreErr(t, f, "*nat\n:KPR-SEP-2 - [0:0]\n-X KPR-SEP-2\nCOMMIT\n", 3)
	if !strings.Contains(re.Stderr, "line 3") {
		t.Errorf("stderr does not name the line: %q", re.Stderr)
	}
	// Not empty.
	restoreErr(t, f, "*nat\n-X KPR-SEP-2\nCOMMIT\n", 2)
	// Missing, built-in.
	restoreErr(t, f, "*nat\n-X KPR-NOPE\nCOMMIT\n", 2)
	restoreErr(t, f, "*nat\n-X PREROUTING\nCOMMIT\n", 2)
	wantSave(t, f, ipt.TableNAT, baseNAT) // all of that changed nothing

	// kube-proxy's stale-chain removal: flush the referrer and the chain by
	// declaring them, then delete.
	mustRestore(t, f, "*nat\n:KPR-SVC-A - [0:0]\n:KPR-SEP-2 - [0:0]\n-A KPR-SVC-A -j KPR-SEP-1\n-X KPR-SEP-2\nCOMMIT\n")
	if ok, _ := f.ChainExists(ipt.TableNAT, "KPR-SEP-2"); ok {
		t.Fatal("KPR-SEP-2 not deleted")
	}

	// Interface DeleteChain: missing is fine, referenced is not.
	if err := f.DeleteChain(ipt.TableNAT, "KPR-GONE"); err != nil {
		t.Fatal(err)
	}
	if err := f.FlushChain(ipt.TableNAT, "KPR-SEP-1"); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteChain(ipt.TableNAT, "KPR-SEP-1"); err == nil {
		t.Fatal("deleted a referenced chain")
	}
	if err := f.DeleteChain(ipt.TableNAT, "PREROUTING"); err == nil {
		t.Fatal("deleted a built-in chain")
	}
}

func TestRestoreCommitsPerTable(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, base)
	batch := "*filter\n:KPR-NEW - [0:0]\nCOMMIT\n" +
		"*nat\n:KPR-SEP-3 - [0:0]\n-A KPR-SEP-3 -j RETURN\n-A KPR-MISSING -j RETURN\nCOMMIT\n" +
		"*mangle\n:KPR-LATER - [0:0]\nCOMMIT\n"
	restoreErr(t, f, batch, 7)
	if ok, _ := f.ChainExists(ipt.TableFilter, "KPR-NEW"); !ok {
		t.Error("filter was committed before the failing table; its change must stay")
	}
	if ok, _ := f.ChainExists(ipt.TableNAT, "KPR-SEP-3"); ok {
		t.Error("failing nat table was partly applied")
	}
	if ok, _ := f.ChainExists(ipt.TableMangle, "KPR-LATER"); ok {
		t.Error("table after the failure was applied")
	}
	wantSave(t, f, ipt.TableNAT, baseNAT)
}

func TestRestoreErrors(t *testing.T) {
	cases := []struct {
		name string
		data string
		line int
	}{
		{"rule outside table", "-A INPUT -j ACCEPT\n", 1},
		{"unknown table", "*bogus\nCOMMIT\n", 1},
		{"table inside table", "*filter\n:KPR-D - [0:0]\n*nat\nCOMMIT\n", 3},
		{"missing COMMIT", "*filter\n:KPR-NC - [0:0]\n", 3},
		{"append to undeclared chain", "# c\n*filter\n-A KPR-NOPE -j ACCEPT\nCOMMIT\n", 3},
		{"unknown target", "*filter\n:KPR-C - [0:0]\n-A KPR-C -j RETURN\n-A KPR-C -j KPR-NONEXIST\nCOMMIT\n", 4},
		{"jump to chain declared later", "*filter\n:KPR-J1 - [0:0]\n-A KPR-J1 -j KPR-J2\n:KPR-J2 - [0:0]\nCOMMIT\n", 3},
		{"goto extension target", "*filter\n:KPR-G - [0:0]\n-A KPR-G -g ACCEPT\nCOMMIT\n", 3},
		{"DNAT in filter", "*filter\n:KPR-C - [0:0]\n-A KPR-C -p tcp -j DNAT --to-destination 198.18.0.1:80\nCOMMIT\n", 3},
		{"REJECT in nat", "*nat\n:KPR-C - [0:0]\n-A KPR-C -j REJECT\nCOMMIT\n", 3},
		{"MASQUERADE in mangle", "*mangle\n:KPR-C - [0:0]\n-A KPR-C -j MASQUERADE\nCOMMIT\n", 3},
		{"jump to built-in chain", "*filter\n:KPR-C - [0:0]\n-A KPR-C -j INPUT\nCOMMIT\n", 3},
		{"chain name too long", "*filter\n:KPR-123456789012345678901234567890 - [0:0]\nCOMMIT\n", 2},
		{"chain named like a target", "*filter\n-N ACCEPT\nCOMMIT\n", 2},
		{"-N existing", "*filter\n-N KPR-E\n-N KPR-E\nCOMMIT\n", 3},
		{"-D missing rule", "*filter\n-D INPUT -j ACCEPT\nCOMMIT\n", 2},
		{"-D index too big", "*filter\n-D INPUT 1\nCOMMIT\n", 2},
		{"-I index too big", "*filter\n-I INPUT 2 -j ACCEPT\nCOMMIT\n", 2},
		{"-F missing chain", "*filter\n-F KPR-NOPE\nCOMMIT\n", 2},
		{"-R index too big", "*filter\n-R INPUT 1 -j ACCEPT\nCOMMIT\n", 2},
		{"unknown command", "*filter\n-Q INPUT\nCOMMIT\n", 2},
		{"bad declaration", "*filter\n:KPR-X\nCOMMIT\n", 2},
		{"-P on user chain", "*filter\n-N KPR-P\n-P KPR-P DROP\nCOMMIT\n", 3},
		{"two targets", "*filter\n-A INPUT -j ACCEPT -j DROP\nCOMMIT\n", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := New(model.IPv4)
			before := string(f.Save(ipt.TableFilter)) + string(f.Save(ipt.TableNAT)) + string(f.Save(ipt.TableMangle))
			re := restoreErr(t, f, c.data, c.line)
			if re.Stderr == "" {
				t.Error("empty Stderr")
			}
			if got := ipt.ContextLines([]byte(c.data), re.Line, 1); c.line <= strings.Count(c.data, "\n") && len(got) == 0 {
				t.Error("ContextLines found nothing at the reported line")
			}
			after := string(f.Save(ipt.TableFilter)) + string(f.Save(ipt.TableNAT)) + string(f.Save(ipt.TableMangle))
			if before != after {
				t.Errorf("failed restore changed state:\n%s", after)
			}
		})
	}
}

func TestRestoreCommands(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, `# comments and blank lines are ignored

*filter
-N KPR-NEW
-A KPR-NEW -j ACCEPT
-I KPR-NEW -j DROP
-I KPR-NEW 2 -m comment --comment mid -j RETURN
-A KPR-NEW -m comment --comment last -j RETURN
-D KPR-NEW -j ACCEPT
-D KPR-NEW 3
-A KPR-NEW -j DROP
-R KPR-NEW 3 -m comment --comment replaced -j RETURN
[5:300] -A KPR-NEW --jump ACCEPT
-P INPUT DROP
-Z
COMMIT
`)
	rules, ok := f.Rules(ipt.TableFilter, "KPR-NEW")
	want := []string{"-j DROP", "-m comment --comment mid -j RETURN", "-m comment --comment replaced -j RETURN", "-j ACCEPT"}
	if !ok || !slices.Equal(rules, want) {
		t.Fatalf("rules %q, want %q", rules, want)
	}
	if !strings.Contains(string(f.Save(ipt.TableFilter)), ":INPUT DROP [0:0]") {
		t.Fatal("-P not applied")
	}
	// -F without a chain flushes the table; -X without one deletes every
	// (now empty, unreferenced) user chain.
	mustRestore(t, f, "*filter\n-F\n-X\nCOMMIT\n")
	wantSave(t, f, ipt.TableFilter, "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
}

func TestCommentQuotingLikeIptablesSave(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, `*filter
:KPR-Z - [0:0]
-A KPR-Z -m comment --comment "default/foo:http" -j ACCEPT
-A KPR-Z -m comment --comment "kpr-canary" -j RETURN
-A KPR-Z -m comment --comment "a b\"c" -j RETURN
COMMIT
`)
	// Same output as iptables-save 1.8.9 (both backends) for the same input.
	rules, _ := f.Rules(ipt.TableFilter, "KPR-Z")
	want := []string{
		`-m comment --comment "default/foo:http" -j ACCEPT`,
		`-m comment --comment kpr-canary -j RETURN`,
		`-m comment --comment "a b\"c" -j RETURN`,
	}
	if !slices.Equal(rules, want) {
		t.Fatalf("got %q\nwant %q", rules, want)
	}
	// Comment with a quote is found by its unquoted args.
	if ok, err := f.RuleExists(ipt.TableFilter, "KPR-Z", "-m", "comment", "--comment", `a b"c`, "-j", "RETURN"); !ok || err != nil {
		t.Fatalf("RuleExists = %v, %v", ok, err)
	}
}

func TestSingleRuleOperations(t *testing.T) {
	f := New(model.IPv6)
	if f.Family() != model.IPv6 || f.Backend() != ipt.BackendLegacy || !f.HasRandomFully() {
		t.Fatal("defaults")
	}
	f.SetBackend(ipt.BackendNFT)
	f.SetHasRandomFully(false)
	if f.Backend() != ipt.BackendNFT || f.HasRandomFully() {
		t.Fatal("setters")
	}

	existed, err := f.EnsureChain(ipt.TableNAT, "KPR-SERVICES")
	if err != nil || existed {
		t.Fatalf("first EnsureChain = %v, %v", existed, err)
	}
	if existed, err = f.EnsureChain(ipt.TableNAT, "KPR-SERVICES"); err != nil || !existed {
		t.Fatalf("second EnsureChain = %v, %v", existed, err)
	}
	if _, err := f.EnsureChain(ipt.TableNAT, "KPR-THIS-NAME-IS-WAY-TOO-LONG-X"); err == nil {
		t.Fatal("long chain name accepted")
	}

	jump := []string{"-m", "comment", "--comment", "kpr service portals", "-j", "KPR-SERVICES"}
	mustRestore(t, f, "*nat\n-A PREROUTING -j RETURN\nCOMMIT\n")
	for i := range 2 {
		existed, err := f.EnsureRule(ipt.Prepend, ipt.TableNAT, "PREROUTING", jump...)
		if err != nil || existed != (i == 1) {
			t.Fatalf("EnsureRule #%d = %v, %v", i, existed, err)
		}
	}
	if _, err := f.EnsureRule(ipt.Append, ipt.TableNAT, "PREROUTING", "-j", "RETURN"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.EnsureRule(ipt.Append, ipt.TableNAT, "OUTPUT", "--jump", "KPR-SERVICES"); err != nil {
		t.Fatal(err)
	}
	wantSave(t, f, ipt.TableNAT, `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KPR-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kpr service portals" -j KPR-SERVICES
-A PREROUTING -j RETURN
-A OUTPUT -j KPR-SERVICES
COMMIT
`)
	if _, err := f.EnsureRule(ipt.Append, ipt.TableNAT, "KPR-NOPE", "-j", "RETURN"); err == nil {
		t.Fatal("EnsureRule into a missing chain succeeded")
	}
	if _, err := f.EnsureRule(ipt.Append, ipt.TableNAT, "OUTPUT", "-j", "KPR-NOPE"); err == nil {
		t.Fatal("EnsureRule jumping to a missing chain succeeded")
	}
	if ok, err := f.RuleExists(ipt.TableNAT, "KPR-NOPE", "-j", "RETURN"); ok || err != nil {
		t.Fatalf("RuleExists in missing chain = %v, %v", ok, err)
	}
	if _, err := f.RuleExists(ipt.TableNAT, "OUTPUT", "-j", "KPR-NOPE"); err == nil {
		t.Fatal("RuleExists with a missing target must fail like iptables -C")
	}

	// The jump keeps KPR-SERVICES referenced.
	if err := f.DeleteChain(ipt.TableNAT, "KPR-SERVICES"); err == nil {
		t.Fatal("deleted referenced chain")
	}
	for range 2 {
		if err := f.DeleteRule(ipt.TableNAT, "PREROUTING", jump...); err != nil {
			t.Fatal(err)
		}
		if err := f.DeleteRule(ipt.TableNAT, "OUTPUT", "-j", "KPR-SERVICES"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.DeleteRule(ipt.TableNAT, "KPR-NOPE", "-j", "RETURN"); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteChain(ipt.TableNAT, "KPR-SERVICES"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.ChainExists(ipt.TableNAT, "KPR-SERVICES"); ok {
		t.Fatal("chain still there")
	}
}

func TestRunAndCanary(t *testing.T) {
	f := New(model.IPv4)
	if ok, err := ipt.CanaryIntact(f); ok || err != nil {
		t.Fatalf("canary intact before creation: %v %v", ok, err)
	}
	if err := ipt.EnsureCanary(f); err != nil {
		t.Fatal(err)
	}
	if err := ipt.EnsureCanary(f); err != nil { // idempotent
		t.Fatal(err)
	}
	if rules, _ := f.Rules(ipt.TableMangle, ipt.CanaryChain); len(rules) != 1 {
		t.Fatalf("canary rules %q", rules)
	}
	if ok, err := ipt.CanaryIntact(f); !ok || err != nil {
		t.Fatalf("canary = %v %v", ok, err)
	}
	// `iptables -t nat -F` keeps chains but drops the canary rule.
	if err := f.Run("-t", "nat", "-F"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.ChainExists(ipt.TableNAT, ipt.CanaryChain); !ok {
		t.Fatal("flush deleted the chain")
	}
	if ok, err := ipt.CanaryIntact(f); ok || err != nil {
		t.Fatalf("canary after nat flush = %v %v", ok, err)
	}
	if ok, _ := ipt.CanaryIntact(f, ipt.TableMangle, ipt.TableFilter); !ok {
		t.Fatal("flush of nat hit other tables")
	}
	if err := ipt.EnsureCanary(f); err != nil {
		t.Fatal(err)
	}
	// Flush plus delete of all filter chains.
	if err := f.Run("-F"); err != nil {
		t.Fatal(err)
	}
	if err := f.Run("-X"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := ipt.CanaryIntact(f); ok {
		t.Fatal("canary intact after filter -F -X")
	}
	if err := f.Run("-t", "nat", "-X", "KPR-NOPE"); err == nil {
		t.Fatal("Run -X of missing chain succeeded")
	}
	if err := f.Run("-t"); err == nil {
		t.Fatal("Run -t without table succeeded")
	}
}

func TestRecordingAndInjectedFailures(t *testing.T) {
	f := New(model.IPv4)
	mustRestore(t, f, "*filter\n:KPR-A - [0:0]\nCOMMIT\n")
	f.FailNextRestores(2, nil)
	for range 2 {
		var re *ipt.RestoreError
		if err := f.Restore(ctx, []byte("*filter\n:KPR-B - [0:0]\nCOMMIT\n")); !errors.As(err, &re) {
			t.Fatalf("injected failure missing: %v", err)
		}
	}
	if ok, _ := f.ChainExists(ipt.TableFilter, "KPR-B"); ok {
		t.Fatal("failed restore applied")
	}
	// RestoreTest is not affected by injections and never commits.
	custom := errors.New("boom")
	f.FailNextRestores(1, custom)
	if err := f.RestoreTest(ctx, []byte("*filter\n:KPR-C - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.ChainExists(ipt.TableFilter, "KPR-C"); ok {
		t.Fatal("RestoreTest committed")
	}
	if err := f.RestoreTest(ctx, []byte("*filter\n-A KPR-NOPE -j ACCEPT\nCOMMIT\n")); err == nil {
		t.Fatal("RestoreTest accepted a bad batch")
	}
	if err := f.Restore(ctx, []byte("*filter\n:KPR-D - [0:0]\nCOMMIT\n")); !errors.Is(err, custom) {
		t.Fatalf("custom injected error: %v", err)
	}
	mustRestore(t, f, "*filter\n:KPR-E - [0:0]\nCOMMIT\n")

	calls := f.Restores()
	if len(calls) != 7 {
		t.Fatalf("%d calls recorded", len(calls))
	}
	wantErr := []bool{false, true, true, false, true, true, false}
	wantTest := []bool{false, false, false, true, true, false, false}
	for i, c := range calls {
		if (c.Err != nil) != wantErr[i] || c.Test != wantTest[i] {
			t.Errorf("call %d: err=%v test=%v", i, c.Err, c.Test)
		}
	}
	if !strings.Contains(string(calls[6].Data), "KPR-E") {
		t.Errorf("payload not recorded: %q", calls[6].Data)
	}
	calls[6].Data[0] = 'X' // callers get copies
	if f.Restores()[6].Data[0] != '*' {
		t.Error("recorded payload aliased")
	}
	f.ResetRestores()
	if len(f.Restores()) != 0 {
		t.Error("ResetRestores")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.Restore(cctx, []byte("*filter\n:KPR-F - [0:0]\nCOMMIT\n")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestNFTReplaceOfRuleAddedInBatch(t *testing.T) {
	batch := "*filter\n-N KPR-NEW\n-A KPR-NEW -j ACCEPT\n-I KPR-NEW -j DROP\n-R KPR-NEW 2 -j RETURN\nCOMMIT\n"
	for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
		f := New(model.IPv4)
		f.SetBackend(b)
		err := f.Restore(ctx, []byte(batch))
		if b == ipt.BackendLegacy {
			if err != nil {
				t.Fatalf("legacy: %v", err)
			}
			if rules, _ := f.Rules(ipt.TableFilter, "KPR-NEW"); !slices.Equal(rules, []string{"-j DROP", "-j RETURN"}) {
				t.Fatalf("legacy rules %q", rules)
			}
			continue
		}
		var re *ipt.RestoreError
		if !errors.As(err, &re) || re.Line != 5 {
			t.Fatalf("nft: want error at line 5, got %v", err)
		}
		// Once committed, positions are fine for nft too.
		mustRestore(t, f, "*filter\n-N KPR-NEW\n-A KPR-NEW -j ACCEPT\n-I KPR-NEW -j DROP\nCOMMIT\n")
		mustRestore(t, f, "*filter\n-I KPR-NEW 2 -j RETURN\n-R KPR-NEW 1 -j ACCEPT\nCOMMIT\n")
		restoreErr(t, f, "*filter\n-A KPR-NEW -j DROP\n-R KPR-NEW 4 -j RETURN\nCOMMIT\n", 3)
		if rules, _ := f.Rules(ipt.TableFilter, "KPR-NEW"); !slices.Equal(rules, []string{"-j ACCEPT", "-j RETURN", "-j ACCEPT"}) {
			t.Fatalf("rules %q", rules)
		}
	}
}
