package render

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// These tests feed rendered batches to the real iptables-restore, inside
// throwaway network namespaces, so "the renderer only writes what the
// kernel accepts" is checked against the kernel rather than assumed.

type restorer struct {
	ns      *netns.NS
	backend string // "legacy" or "nft"
}

// cmd is the iptables binary of the backend, e.g. "ip6tables-nft".
func (r *restorer) cmd(fam model.Family) string {
	if fam == model.IPv6 {
		return "ip6tables-" + r.backend
	}
	return "iptables-" + r.backend
}

func (r *restorer) bin(fam model.Family, tool string) string { return r.cmd(fam) + "-" + tool }

func (r *restorer) restore(fam model.Family, data []byte, test bool) error {
	args := []string{r.bin(fam, "restore"), "--noflush", "-w", "5"}
	if test {
		args = append(args, "--test")
	}
	c := r.ns.Command(args...)
	c.Stdin = bytes.NewReader(data)
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// state returns kpr's chains and their rules as the kernel holds them,
// normalised (comment text kept, counters dropped, chains sorted).
func (r *restorer) state(t *testing.T, fam model.Family) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		out, err := r.ns.Exec(r.bin(fam, "save"), "-t", table)
		if err != nil {
			t.Fatalf("%s: %v: %s", r.bin(fam, "save"), err, out)
		}
		rules := map[string][]string{}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && strings.HasPrefix(f[0], ":") && IsOurs(f[0][1:]):
				rules[f[0][1:]] = rules[f[0][1:]]
			case len(f) > 1 && f[0] == "-A" && IsOurs(f[1]):
				rules[f[1]] = append(rules[f[1]], line)
			}
		}
		names := make([]string, 0, len(rules))
		for n := range rules {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(&b, "%s %s\n", table, n)
			for _, l := range rules[n] {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

func requireBackend(t testing.TB, backend string) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "iptables-"+backend+"-restore")
	netns.RequireTool(t, "ip6tables-"+backend+"-restore")
}

// fuzzNamespaces are two namespaces per test process, reused by every fuzz
// input: creating and deleting a namespace per input stalls the kernel's
// namespace teardown after a few hundred iterations. They are reset between
// inputs and deleted by TestMain; namespaces of dead test processes are
// swept at start.
var fuzzNamespaces struct {
	once sync.Once
	a, b *netns.NS
}

func fuzzPair(t *testing.T) (*netns.NS, *netns.NS) {
	fuzzNamespaces.once.Do(func() {
		sweepDeadFuzzNamespaces()
		fuzzNamespaces.a = netns.NewPersistent(fmt.Sprintf("kprfz-%d-a", os.Getpid()))
		fuzzNamespaces.b = netns.NewPersistent(fmt.Sprintf("kprfz-%d-b", os.Getpid()))
	})
	a, b := fuzzNamespaces.a, fuzzNamespaces.b
	if a == nil || b == nil {
		t.Fatal("could not create fuzz namespaces")
	}
	for _, n := range []*netns.NS{a, b} {
		for _, bin := range []string{"iptables-legacy", "ip6tables-legacy"} {
			for _, table := range []string{"filter", "nat"} {
				if out, err := n.Exec(bin, "-w", "5", "-t", table, "-F"); err != nil {
					t.Fatalf("reset %s: %v: %s", n.Name, err, out)
				}
				if out, err := n.Exec(bin, "-w", "5", "-t", table, "-X"); err != nil {
					t.Fatalf("reset %s: %v: %s", n.Name, err, out)
				}
			}
		}
	}
	return a, b
}

func sweepDeadFuzzNamespaces() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "kprfz-") {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) != 3 {
			continue
		}
		if pid, err := strconv.Atoi(parts[1]); err == nil && syscall.Kill(pid, 0) != nil {
			(&netns.NS{Name: f[0]}).Delete()
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, n := range []*netns.NS{fuzzNamespaces.a, fuzzNamespaces.b} {
		if n != nil {
			n.Delete()
		}
	}
	os.Exit(code)
}

// FuzzRenderAcceptedByKernel: any snapshot renders a batch that the real
// iptables-restore accepts, and a partial sync on top of any earlier state
// leaves the kernel exactly as a full sync of the new state would.
func FuzzRenderAcceptedByKernel(f *testing.F) {
	for i, seed := range [][]byte{
		nil,
		{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		bytes.Repeat([]byte{0xff}, 64),
		bytes.Repeat([]byte{7, 3, 250, 1, 99}, 40),
		[]byte("kpr renders what iptables-restore accepts, always, for every family and mode"),
	} {
		f.Add(seed)
		f.Add(append([]byte{byte(i), 1}, seed...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		requireBackend(t, "legacy")
		s := &byteSource{b: data}
		fam := model.IPv4
		if s.bool() {
			fam = model.IPv6
		}
		cfg, node := genConfig(s, fam)
		snap1 := genSnapshot(s, fam)
		snap2 := mutate(s, snap1)

		nsA, nsB := fuzzPair(t)
		r := &restorer{ns: nsA, backend: "legacy"}
		res1 := Render(Input{Snapshot: snap1, Node: node, Config: cfg})
		for _, b := range res1.Batches {
			if err := r.restore(fam, b, false); err != nil {
				t.Fatalf("full batch rejected: %v\n%s", err, b)
			}
		}
		// Usually partial; full when the total endpoint count crossed the
		// large-cluster threshold (comments change everywhere).
		res2 := Render(Input{Snapshot: snap2, Node: node, Config: cfg, Prev: res1.State})
		for _, b := range res2.Batches {
			if err := r.restore(fam, b, false); err != nil {
				t.Fatalf("second sync rejected: %v\n--- first:\n%s\n--- second:\n%s", err, bytes.Join(res1.Batches, nil), b)
			}
		}
		got := r.state(t, fam)

		fresh := &restorer{ns: nsB, backend: "legacy"}
		cfg2 := *cfg
		cfg2.MaxBatchServices = 0 // the reference: one batch
		full2 := Render(Input{Snapshot: snap2, Node: node, Config: &cfg2})
		if err := fresh.restore(fam, full2.Data, false); err != nil {
			t.Fatalf("full batch rejected: %v\n%s", err, full2.Data)
		}
		if want := fresh.state(t, fam); got != want {
			t.Fatalf("partial sync left a different kernel state than a full sync\n--- partial:\n%s\n--- full:\n%s", got, want)
		}
	})
}

// TestGoldenAcceptedByKernel: every golden scenario's batches apply on both
// backends, step by step.
func TestGoldenAcceptedByKernel(t *testing.T) {
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			for _, sc := range scenarios() {
				t.Run(sc.name, func(t *testing.T) {
					fam := sc.family
					if fam == 0 {
						fam = model.IPv4
					}
					r := &restorer{ns: netns.New(t, "kprgd"), backend: backend}
					// Recreate the "existing" chains so the deletions apply.
					for _, st := range sc.steps {
						for table, chains := range st.existing {
							for _, c := range chains {
								if IsOurs(c) && c != "KPR-SERVICES" {
									r.ns.MustExec(r.cmd(fam), "-t", table, "-N", c)
								}
							}
						}
					}
					for i, data := range renderSteps(t, sc) {
						if err := r.restore(fam, data, false); err != nil {
							t.Fatalf("step %d: %v\n%s", i+1, err, data)
						}
					}
				})
			}
		})
	}
}

// renderSteps renders a scenario's restore inputs in order (as runScenario
// does, without the golden formatting): one per batch of every step.
func renderSteps(t *testing.T, sc scenario) [][]byte {
	t.Helper()
	var out [][]byte
	var cur []byte
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur = nil
	}
	for _, line := range bytes.SplitAfter(runScenario(t, sc), []byte("\n")) {
		if bytes.HasPrefix(line, []byte("# ")) { // "# step …" or "# batch …"
			flush()
			continue
		}
		cur = append(cur, line...)
	}
	flush()
	return out
}
