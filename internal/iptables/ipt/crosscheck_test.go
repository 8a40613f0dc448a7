package ipt_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	ipttest "github.com/kpr-proxy/kpr/internal/iptables/ipt/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

// crossStep is one step applied to both the fake and the kernel.
type crossStep struct {
	name string
	// Exactly one of batch, op and external is set.
	batch string // iptables-restore payload ({SVC1}-style placeholders)
	// op runs single-rule operations and summarizes their results, which
	// must agree too.
	op func(ipt.Interface) (string, error)
	// external is an iptables command line run by "someone else": Run on the
	// fake, the real tool in the namespace.
	external []string

	wantErr bool
	errOnly ipt.Backend // if set, the step fails with this backend only
	line    int         // expected RestoreError line (fake and, unless overridden, kernel)
	// kernelLine overrides line for a backend whose real tool blames another
	// line (see ipt.RestoreError.Line).
	kernelLine map[ipt.Backend]int
}

var crossTables = []ipt.Table{ipt.TableNAT, ipt.TableFilter, ipt.TableMangle}

func crossSteps() []crossStep {
	return []crossStep{{
		name: "multi-table initial sync",
		batch: `*nat
:KPR-SERVICES - [0:0]
:KPR-MARK-MASQ - [0:0]
:KPR-SVC-A - [0:0]
:KPR-SEP-1 - [0:0]
:KPR-SEP-2 - [0:0]
-A PREROUTING -m comment --comment "kpr service portals" -j KPR-SERVICES
-A OUTPUT -m comment --comment "kpr service portals" -j KPR-SERVICES
-A KPR-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KPR-SERVICES -d {SVC1} -p tcp -m comment --comment "ns1/svc1:http cluster IP" -m tcp --dport 80 -j KPR-SVC-A
-A KPR-SVC-A -m comment --comment ns1/svc1:http -m statistic --mode random --probability 0.50000000000 -j KPR-SEP-1
-A KPR-SVC-A -m comment --comment ns1/svc1:http -j KPR-SEP-2
-A KPR-SEP-1 -s {EP1SRC} -j KPR-MARK-MASQ
-A KPR-SEP-1 -p tcp -m tcp -j DNAT --to-destination {EP1}
-A KPR-SEP-2 -p tcp -m tcp -j DNAT --to-destination {EP2}
COMMIT
*filter
:KPR-FORWARD - [0:0]
:KPR-SERVICES - [0:0]
-A FORWARD -j KPR-FORWARD
-A KPR-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KPR-SERVICES -d {SVC2} -p tcp -m comment --comment "ns1/none has no endpoints" -m tcp --dport 80 -j REJECT --reject-with {REJECT}
COMMIT
*mangle
:KPR-MANGLE - [0:0]
-A KPR-MANGLE -m comment --comment kpr -j RETURN
COMMIT
`,
	}, {
		name: "partial sync: declaring flushes, stale chain deleted",
		batch: `*nat
:KPR-SVC-A - [0:0]
:KPR-SEP-2 - [0:0]
-A KPR-SVC-A -m comment --comment ns1/svc1:http -j KPR-SEP-1
-X KPR-SEP-2
COMMIT
`,
	}, {
		name: "-X of a referenced chain fails; the earlier table stays committed",
		batch: `*filter
:KPR-EXTRA - [0:0]
-A KPR-EXTRA -j RETURN
COMMIT
*nat
:KPR-SEP-3 - [0:0]
-A KPR-SEP-3 -j RETURN
:KPR-SEP-1 - [0:0]
-X KPR-SEP-1
COMMIT
`,
		wantErr: true, line: 9,
	}, {
		name:    "-X of a non-empty chain fails",
		batch:   "*filter\n-X KPR-EXTRA\nCOMMIT\n",
		wantErr: true, line: 2,
	}, {
		name:    "-A to an undeclared chain fails",
		batch:   "*nat\n:KPR-SEP-4 - [0:0]\n-A KPR-SEP-4 -j RETURN\n-A KPR-SEP-5 -j RETURN\nCOMMIT\n",
		wantErr: true, line: 4,
	}, {
		name:    "jump to a missing chain fails",
		batch:   "*nat\n:KPR-SVC-B - [0:0]\n-A KPR-SVC-B -j KPR-SEP-NONE\n-A KPR-SVC-B -j RETURN\nCOMMIT\n",
		wantErr: true, line: 3, kernelLine: map[ipt.Backend]int{ipt.BackendNFT: 5},
	}, {
		name:    "DNAT outside nat fails",
		batch:   "*filter\n:KPR-BAD - [0:0]\n-A KPR-BAD -p tcp -m tcp -j DNAT --to-destination {EP1}\nCOMMIT\n",
		wantErr: true, line: 3, kernelLine: map[ipt.Backend]int{ipt.BackendLegacy: 4},
	}, {
		name: "-N -I -F; built-in declaration keeps rules",
		batch: `*filter
:FORWARD - [0:0]
:OUTPUT DROP [0:0]
-N KPR-NEW
-A KPR-NEW -j ACCEPT
-I KPR-NEW -j DROP
-F KPR-FORWARD
-A KPR-FORWARD -j KPR-NEW
COMMIT
`,
	}, {
		name: "positional -I and -D on committed rules, same table twice in a batch",
		batch: `*filter
-I KPR-NEW 2 -m comment --comment mid -j RETURN
-A KPR-NEW -m comment --comment last -j RETURN
COMMIT
*filter
-D KPR-NEW -j ACCEPT
-D KPR-NEW 1
COMMIT
`,
	}, {
		// iptables-nft-restore 1.8.9 segfaults on this batch (so Line is
		// unknown); legacy applies it. The fake, told it is nft, rejects it.
		name:    "-R of a rule added by the same batch (nft crashes)",
		batch:   "*filter\n-N KPR-POS\n-A KPR-POS -j ACCEPT\n-R KPR-POS 1 -j DROP\nCOMMIT\n",
		errOnly: ipt.BackendNFT, line: 4, kernelLine: map[ipt.Backend]int{ipt.BackendNFT: 0},
	}, {
		// Not in the batch above: iptables-nft-restore 1.8.9 segfaults on
		// -R of a rule added earlier in the same batch.
		name:  "-R",
		batch: "*filter\n-R KPR-NEW 2 -m comment --comment replaced -j RETURN\nCOMMIT\n",
	}, {
		name: "single-rule operations",
		op: func(k ipt.Interface) (string, error) {
			var res []string
			note := func(format string, args ...any) { res = append(res, fmt.Sprintf(format, args...)) }
			hook := []string{"-m", "comment", "--comment", "kpr hook", "-j", "KPR-HOOK"}
			for range 2 {
				existed, err := k.EnsureChain(ipt.TableNAT, "KPR-HOOK")
				note("EnsureChain existed=%v err=%v", existed, err != nil)
			}
			for range 2 {
				existed, err := k.EnsureRule(ipt.Prepend, ipt.TableNAT, "PREROUTING", hook...)
				note("EnsureRule(prepend) existed=%v err=%v", existed, err != nil)
				existed, err = k.EnsureRule(ipt.Append, ipt.TableNAT, "POSTROUTING", hook...)
				note("EnsureRule(append) existed=%v err=%v", existed, err != nil)
			}
			_, err := k.EnsureRule(ipt.Append, ipt.TableNAT, "KPR-NOPE", "-j", "RETURN")
			note("EnsureRule(missing chain) err=%v", err != nil)
			ok, err := k.RuleExists(ipt.TableNAT, "POSTROUTING", hook...)
			note("RuleExists=%v err=%v", ok, err != nil)
			note("DeleteRule=%v", k.DeleteRule(ipt.TableNAT, "POSTROUTING", hook...) != nil)
			note("DeleteRule again=%v", k.DeleteRule(ipt.TableNAT, "POSTROUTING", hook...) != nil)
			ok, err = k.RuleExists(ipt.TableNAT, "POSTROUTING", hook...)
			note("RuleExists=%v err=%v", ok, err != nil)
			note("DeleteChain(referenced) err=%v", k.DeleteChain(ipt.TableNAT, "KPR-HOOK") != nil)
			note("DeleteChain(non-empty) err=%v", k.DeleteChain(ipt.TableFilter, "KPR-EXTRA") != nil)
			note("FlushChain=%v", k.FlushChain(ipt.TableFilter, "KPR-EXTRA") != nil)
			note("DeleteChain=%v", k.DeleteChain(ipt.TableFilter, "KPR-EXTRA") != nil)
			note("DeleteChain(missing)=%v", k.DeleteChain(ipt.TableFilter, "KPR-EXTRA") != nil)
			if err := ipt.EnsureCanary(k); err != nil {
				return "", err
			}
			ok, err = ipt.CanaryIntact(k)
			note("CanaryIntact=%v err=%v", ok, err != nil)
			return strings.Join(res, "\n"), nil
		},
	}, {
		name:     "external flush of nat",
		external: []string{"-t", "nat", "-F"},
	}, {
		name: "canary lost after external flush",
		op: func(k ipt.Interface) (string, error) {
			ok, err := ipt.CanaryIntact(k)
			return fmt.Sprintf("CanaryIntact=%v", ok), err
		},
	}, {
		name: "full resync after flush, stale chains removed",
		batch: `*nat
:KPR-SERVICES - [0:0]
:KPR-MARK-MASQ - [0:0]
:KPR-SVC-A - [0:0]
:KPR-SEP-1 - [0:0]
:KPR-HOOK - [0:0]
-A KPR-SERVICES -d {SVC1} -p tcp -m comment --comment "ns1/svc1:http cluster IP" -m tcp --dport 80 -j KPR-SVC-A
-A KPR-SVC-A -m comment --comment ns1/svc1:http -j KPR-SEP-1
-A KPR-SEP-1 -p tcp -m tcp -j DNAT --to-destination {EP2}
-X KPR-HOOK
-X KPR-MARK-MASQ
COMMIT
*filter
:KPR-SERVICES - [0:0]
:KPR-NEW - [0:0]
:KPR-FORWARD - [0:0]
-X KPR-NEW
COMMIT
`,
	}}
}

// TestKernelCrossCheckFake applies the same steps to the fake and to the real
// kernel, for both backends and families, and requires the same iptables-save
// state and the same errors after every step. This is what makes the fake
// trustworthy for the sync loop's unit tests.
func TestKernelCrossCheckFake(t *testing.T) {
	forEachKernel(t, func(t *testing.T, f model.Family, b ipt.Backend) {
		k, n := newKernel(t, f, b)
		fake := ipttest.New(f)
		fake.SetBackend(b)
		a := familyAddrs(f)
		for i, st := range crossSteps() {
			var fakeErr, kernErr error
			switch {
			case st.batch != "":
				data := []byte(a.expand(st.batch))
				fakeErr = fake.Restore(ctx, data)
				kernErr = k.Restore(ctx, data)
			case st.op != nil:
				fakeRes, ferr := st.op(fake)
				kernRes, kerr := st.op(k)
				if ferr != nil || kerr != nil {
					t.Fatalf("step %d %q: fake err %v, kernel err %v", i, st.name, ferr, kerr)
				}
				if fakeRes != kernRes {
					t.Fatalf("step %d %q: results differ\nfake:\n%s\nkernel:\n%s", i, st.name, fakeRes, kernRes)
				}
			case st.external != nil:
				fakeErr = fake.Run(st.external...)
				_, kernErr = n.Exec(append([]string{toolName(f, b), "-w", "5"}, st.external...)...)
			}
			wantErr := st.wantErr || st.errOnly == b
			if (fakeErr != nil) != wantErr || (kernErr != nil) != wantErr {
				t.Fatalf("step %d %q: wantErr=%v, fake: %v, kernel: %v", i, st.name, wantErr, fakeErr, kernErr)
			}
			if wantErr && st.batch != "" {
				var fre, kre *ipt.RestoreError
				if !errors.As(fakeErr, &fre) || !errors.As(kernErr, &kre) {
					t.Fatalf("step %d %q: want *RestoreError from both: %v / %v", i, st.name, fakeErr, kernErr)
				}
				wantK := st.line
				if l, ok := st.kernelLine[b]; ok {
					wantK = l
				}
				if fre.Line != st.line || kre.Line != wantK {
					t.Fatalf("step %d %q: lines fake=%d (want %d) kernel=%d (want %d)\nkernel: %v",
						i, st.name, fre.Line, st.line, kre.Line, wantK, kre)
				}
			}
			for _, table := range crossTables {
				want := normalizeSave(fake.Save(table))
				got := nsSave(t, n, f, b, table)
				if got != want {
					t.Fatalf("step %d %q: table %s differs\nkernel:\n%s\nfake:\n%s", i, st.name, table, got, want)
				}
			}
		}
	})
}
