package ipt_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

var (
	families = []model.Family{model.IPv4, model.IPv6}
	backends = []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT}
)

// TestMain guards the house rule: every kernel test works inside its own
// namespace, so the root namespace's rule sets (both backends, both
// families; read-only dumps) must be identical before and after the run.
func TestMain(m *testing.M) { netns.GuardRoot(m, netns.IptablesSaves...) }

// normalizeSave drops comment lines and zeroes counters, leaving what the
// fake prints.
func normalizeSave(out []byte) string { return netns.NormalizeSave(out) }

// rootSnapshot dumps the root namespace's rules (read-only).
func rootSnapshot() string { return netns.RootState(netns.IptablesSaves...) }

// nsIface runs every method of an ipt.Interface on a thread inside a test
// namespace, so that the iptables binaries it execs run there too. Tests only
// ever reach the real Runner through it, which is what keeps them off the
// root namespace.
type nsIface struct {
	t  testing.TB
	ns *netns.NS
	r  ipt.Interface
}

var _ ipt.Interface = (*nsIface)(nil)

func (n *nsIface) in(fn func()) {
	n.t.Helper()
	if err := n.ns.Do(func() error { fn(); return nil }); err != nil {
		n.t.Fatalf("entering netns %s: %v", n.ns.Name, err)
	}
}

func (n *nsIface) Family() model.Family { return n.r.Family() }
func (n *nsIface) Backend() ipt.Backend { return n.r.Backend() }
func (n *nsIface) HasRandomFully() bool { return n.r.HasRandomFully() }

func (n *nsIface) Restore(ctx context.Context, data []byte) (err error) {
	n.in(func() { err = n.r.Restore(ctx, data) })
	return
}

func (n *nsIface) RestoreTest(ctx context.Context, data []byte) (err error) {
	n.in(func() { err = n.r.RestoreTest(ctx, data) })
	return
}

func (n *nsIface) SaveTable(ctx context.Context, t ipt.Table) (out []byte, err error) {
	n.in(func() { out, err = n.r.SaveTable(ctx, t) })
	return
}

func (n *nsIface) ListChains(ctx context.Context, t ipt.Table) (out []string, err error) {
	n.in(func() { out, err = n.r.ListChains(ctx, t) })
	return
}

func (n *nsIface) ChainExists(t ipt.Table, c string) (ok bool, err error) {
	n.in(func() { ok, err = n.r.ChainExists(t, c) })
	return
}

func (n *nsIface) EnsureChain(t ipt.Table, c string) (ok bool, err error) {
	n.in(func() { ok, err = n.r.EnsureChain(t, c) })
	return
}

func (n *nsIface) EnsureRule(p ipt.RulePosition, t ipt.Table, c string, args ...string) (ok bool, err error) {
	n.in(func() { ok, err = n.r.EnsureRule(p, t, c, args...) })
	return
}

func (n *nsIface) RuleExists(t ipt.Table, c string, args ...string) (ok bool, err error) {
	n.in(func() { ok, err = n.r.RuleExists(t, c, args...) })
	return
}

func (n *nsIface) DeleteRule(t ipt.Table, c string, args ...string) (err error) {
	n.in(func() { err = n.r.DeleteRule(t, c, args...) })
	return
}

func (n *nsIface) FlushChain(t ipt.Table, c string) (err error) {
	n.in(func() { err = n.r.FlushChain(t, c) })
	return
}

func (n *nsIface) DeleteChain(t ipt.Table, c string) (err error) {
	n.in(func() { err = n.r.DeleteChain(t, c) })
	return
}

// requireBackend skips unless the tools of b for f are installed.
func requireBackend(t *testing.T, f model.Family, b ipt.Backend) {
	t.Helper()
	base := "iptables"
	if f == model.IPv6 {
		base = "ip6tables"
	}
	for _, suffix := range []string{"", "-save", "-restore"} {
		netns.RequireTool(t, base+"-"+string(b)+suffix)
	}
}

func toolName(f model.Family, b ipt.Backend) string {
	if f == model.IPv6 {
		return "ip6tables-" + string(b)
	}
	return "iptables-" + string(b)
}

// newKernel creates a namespace and a Runner bound to it.
func newKernel(t *testing.T, f model.Family, b ipt.Backend) (*nsIface, *netns.NS) {
	t.Helper()
	netns.RequireRoot(t)
	requireBackend(t, f, b)
	n := netns.New(t, "kpr-ipt")
	// New only runs `iptables --version`, which touches no netfilter state.
	r, err := ipt.New(ipt.Config{Family: f, Backend: b, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &nsIface{t: t, ns: n, r: r}, n
}

// nsSave dumps a table inside the namespace with the plain tool, independent
// of the code under test.
func nsSave(t *testing.T, n *netns.NS, f model.Family, b ipt.Backend, table ipt.Table) string {
	t.Helper()
	return normalizeSave([]byte(n.MustExec(toolName(f, b)+"-save", "-t", string(table))))
}

// addrs are the family's test addresses from the GUIDE's address plan.
type addrs struct {
	svc1, svc2       string // service IPs with host prefix
	ep1Src           string // endpoint as -s (host prefix)
	ep1DNAT, ep2DNAT string // endpoint as --to-destination
	rejectWith       string
}

func familyAddrs(f model.Family) addrs {
	if f == model.IPv6 {
		return addrs{
			svc1: "2001:db8:20::a/128", svc2: "2001:db8:20::b/128",
			ep1Src:  "2001:db8:10:1::2/128",
			ep1DNAT: "[2001:db8:10:1::2]:8080", ep2DNAT: "[2001:db8:10:2::2]:8080",
			rejectWith: "icmp6-port-unreachable",
		}
	}
	return addrs{
		svc1: "198.19.192.10/32", svc2: "198.19.192.11/32",
		ep1Src:  "198.18.1.2/32",
		ep1DNAT: "198.18.1.2:8080", ep2DNAT: "198.18.2.2:8080",
		rejectWith: "icmp-port-unreachable",
	}
}

// expand fills {SVC1} style placeholders with the family's addresses.
func (a addrs) expand(s string) string {
	return strings.NewReplacer(
		"{SVC1}", a.svc1, "{SVC2}", a.svc2, "{EP1SRC}", a.ep1Src,
		"{EP1}", a.ep1DNAT, "{EP2}", a.ep2DNAT, "{REJECT}", a.rejectWith,
	).Replace(s)
}

func lineCount(s string) int { return bytes.Count([]byte(s), []byte("\n")) }
