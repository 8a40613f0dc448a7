package ipset_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	ipvstest "github.com/kpr-proxy/kpr/internal/ipvs/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// TestMain guards the house rule: the root namespace's ip sets (read-only
// listing) are the same before and after the run.
func TestMain(m *testing.M) { netns.GuardRoot(m, netns.IPSetNames) }

// nsRunner runs the real Runner inside a test namespace.
type nsRunner struct {
	t  *testing.T
	ns *netns.NS
	r  *ipset.Runner
}

func (n *nsRunner) Save(ctx context.Context) (out []byte, err error) {
	if e := n.ns.Do(func() error { out, err = n.r.Save(ctx); return nil }); e != nil {
		n.t.Fatal(e)
	}
	return
}

func (n *nsRunner) Restore(ctx context.Context, data []byte) (err error) {
	if e := n.ns.Do(func() error { err = n.r.Restore(ctx, data); return nil }); e != nil {
		n.t.Fatal(e)
	}
	return
}

var _ ipset.Interface = (*nsRunner)(nil)

func dump(t *testing.T, i ipset.Interface) string {
	t.Helper()
	data, err := i.Save(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sets, err := ipset.Parse(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(sets))
	for n := range sets {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		s := sets[n]
		fmt.Fprintf(&b, "%s %s %s maxelem=%d: %s\n", n, s.Type, s.Family, s.MaxElem, strings.Join(s.Sorted(), " "))
	}
	return b.String()
}

// TestFakeMatchesKernel feeds the same batches to the real tool in a
// namespace and to FakeIPSet, and requires the same outcome (error and
// blamed line) and the same sets afterwards — including after failures,
// where ipset restore keeps what ran before the bad line.
func TestFakeMatchesKernel(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "ipset")
	r, err := ipset.NewRunner(ipset.Config{})
	if err != nil {
		t.Fatal(err)
	}
	real := &nsRunner{t: t, ns: netns.New(t, "kpr-ipset"), r: r}
	fake := ipvstest.NewFakeIPSet()

	var first ipset.Batch
	for _, s := range []struct {
		name string
		typ  ipset.Type
		fam  model.Family
		ents []string
	}{
		{"KPR-CLUSTER-IP", ipset.HashIPPort, model.IPv4, []string{"198.19.192.10,tcp:80", "198.19.192.53,udp:53", "198.19.192.12,sctp:3868"}},
		{"KPR-LOOP-BACK", ipset.HashIPPortIP, model.IPv4, []string{"198.18.1.2,tcp:8080,198.18.1.2"}},
		{"KPR-LOAD-BALANCER-SOURCE-CIDR", ipset.HashIPPortNet, model.IPv4, []string{"203.0.113.20,tcp:80,198.51.100.0/24", "203.0.113.20,tcp:80,198.51.100.7/32", "203.0.113.20,tcp:80,0.0.0.0/1"}},
		{"KPR-NODE-PORT-TCP", ipset.BitmapPort, model.IPv4, []string{"30080", "32767"}},
		{"KPR-IPVS-IPS", ipset.HashIP, model.IPv4, []string{"198.19.192.10", "203.0.113.20"}},
		{"KPR-6-CLUSTER-IP", ipset.HashIPPort, model.IPv6, []string{"2001:db8:20::a,tcp:80"}},
		{"KPR-6-LOAD-BALANCER-SOURCE-CIDR", ipset.HashIPPortNet, model.IPv6, []string{"2001:db8:30::5,tcp:80,2001:db8:1::/64", "2001:db8:30::5,tcp:80,8000::/1"}},
		{"KPR-6-LOOP-BACK", ipset.HashIPPortIP, model.IPv6, []string{"2001:db8:10:1::2,udp:53,2001:db8:10:1::2"}},
	} {
		set := ipset.NewSet(s.name, s.typ, s.fam)
		first.Create(set)
		for _, e := range s.ents {
			first.Add(s.name, e)
		}
	}

	batches := []struct {
		name    string
		data    string
		wantErr bool
	}{
		{"create and fill every type", string(first.Bytes()), false},
		{"re-add present, delete absent, re-create compatible",
			"add KPR-CLUSTER-IP 198.19.192.10,6:80\ndel KPR-CLUSTER-IP 198.19.192.99,6:1\ncreate KPR-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 1048576\n", false},
		{"delete present", "del KPR-CLUSTER-IP 198.19.192.53,17:53\ndel KPR-NODE-PORT-TCP 32767\n", false},
		{"re-create with another maxelem", "add KPR-IPVS-IPS 198.19.192.77\ncreate KPR-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n", true},
		{"add to a missing set", "add KPR-IPVS-IPS 198.19.192.78\nadd KPR-NOPE 198.19.192.10\n", true},
		{"zero-length network", "add KPR-LOAD-BALANCER-SOURCE-CIDR 203.0.113.20,6:80,0.0.0.0/0\n", true},
		{"wrong family", "add KPR-CLUSTER-IP 2001:db8::1,6:80\n", true},
		{"flush and destroy", "flush KPR-LOOP-BACK\ndestroy KPR-LOOP-BACK\n", false},
		{"destroy a missing set", "destroy KPR-LOOP-BACK\n", false},
		{"buffered lines die with a bad element", "add KPR-IPVS-IPS 198.19.192.90\nadd KPR-IPVS-IPS 2001:db8::1\n", true},
		{"another set's lines are sent first", "add KPR-IPVS-IPS 198.19.192.91\nadd KPR-CLUSTER-IP 198.19.192.91,6:1\nadd KPR-CLUSTER-IP 2001:db8::1,6:1\n", true},
		{"commands send buffered lines", "add KPR-IPVS-IPS 198.19.192.92\nflush KPR-6-LOOP-BACK\ndestroy KPR-NOPE\nadd KPR-IPVS-IPS 198.19.192.93\n", false},
	}
	ctx := context.Background()
	for _, b := range batches {
		errReal := real.Restore(ctx, []byte(b.data))
		errFake := fake.Restore(ctx, []byte(b.data))
		if (errReal != nil) != b.wantErr || (errFake != nil) != b.wantErr {
			t.Fatalf("%s: real error %v, fake error %v, want error %v", b.name, errReal, errFake, b.wantErr)
		}
		if b.wantErr {
			var re, fe *ipset.RestoreError
			if !errors.As(errReal, &re) || !errors.As(errFake, &fe) || re.Line != fe.Line || re.Line == 0 {
				t.Fatalf("%s: blamed lines differ: real %v, fake %v", b.name, errReal, errFake)
			}
		}
		if r, f := dump(t, real), dump(t, fake); r != f {
			t.Fatalf("%s: state differs\n--- kernel\n%s--- fake\n%s", b.name, r, f)
		}
	}
}
