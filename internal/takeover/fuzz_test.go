package takeover_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/takeover"
	takeovertest "github.com/kpr-proxy/kpr/internal/takeover/testing"
)

// FuzzTakeover loads any rule set the fake accepts, runs the takeover, and
// checks the invariants: it succeeds; no kube-proxy chain survives unless
// the plan kept it; every other chain survives; and every rule of a chain
// that is not kube-proxy's survives, except kube-proxy's jumps.
//
//	go test ./internal/takeover -run XXX -fuzz FuzzTakeover
func FuzzTakeover(f *testing.F) {
	for _, name := range []string{"kube-proxy-iptables-v4.save", "kube-proxy-ipvs-v4.save"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, []byte(kprState)...))
	}
	f.Add([]byte("*nat\n:KUBE-SERVICES - [0:0]\n:X - [0:0]\n-A X -j KUBE-SERVICES\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A OUTPUT -j X\nCOMMIT\n"))
	f.Add([]byte("*filter\n:KUBE-FIREWALL - [0:0]\n:KUBE-PROXY-X - [0:0]\n-A KUBE-FIREWALL -j KUBE-PROXY-X\nCOMMIT\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tb := takeovertest.NewTables(model.IPv4, ipt.BackendNFT)
		if err := tb.Load(data); err != nil {
			t.Skip()
		}
		before, err := tb.SaveAll(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		tk, err := takeover.New(takeover.Config{Tables: []takeover.Tables{tb}, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		res, err := tk.Run(context.Background())
		if err != nil {
			t.Fatalf("takeover failed on a rule set the kernel (fake) accepted: %v\n%s", err, before)
		}
		after, err := tb.SaveAll(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		kept := map[string]bool{}
		jumps := map[string]bool{}
		for _, ip := range res.Plan.IPTables {
			for _, tp := range ip.Tables {
				for _, k := range tp.Kept {
					kept[string(tp.Table)+"/"+k.Chain] = true
				}
				for _, j := range tp.Jumps {
					jumps[string(tp.Table)+"/-A "+j.Chain+" "+j.Spec] = true
				}
			}
		}
		afterLines := map[string]bool{}
		table := ""
		for _, line := range strings.Split(string(after), "\n") {
			if strings.HasPrefix(line, "*") {
				table = line[1:]
			}
			afterLines[table+"/"+line] = true
			if name, ok := strings.CutPrefix(line, ":"); ok {
				name, _, _ = strings.Cut(name, " ")
				if takeover.ChainOwner(name) == takeover.OwnerKubeProxy && !kept[table+"/"+name] {
					t.Errorf("kube-proxy chain %s/%s survived and was not kept", table, name)
				}
			}
		}
		table = ""
		for _, line := range strings.Split(string(before), "\n") {
			if strings.HasPrefix(line, "*") {
				table = line[1:]
			}
			switch {
			case strings.HasPrefix(line, ":"):
				name, _, _ := strings.Cut(line[1:], " ")
				if takeover.ChainOwner(name) != takeover.OwnerKubeProxy && !afterLines[table+"/"+line] {
					t.Errorf("chain %s/%s is not kube-proxy's but was removed", table, name)
				}
			case strings.HasPrefix(line, "-A "):
				chain, _, _ := strings.Cut(line[3:], " ")
				if takeover.ChainOwner(chain) == takeover.OwnerKubeProxy || jumps[table+"/"+line] {
					continue
				}
				if !afterLines[table+"/"+line] {
					t.Errorf("rule %s/%q is not kube-proxy's but was removed", table, line)
				}
			}
		}
	})
}
