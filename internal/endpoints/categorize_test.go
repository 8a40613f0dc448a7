package endpoints

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/model"
)

// ep builds an endpoint from a compact spec: "10.0.0.1 ready local zone=a nodehint=n1 zonehint=a".
func ep(spec string) *model.Endpoint {
	f := strings.Fields(spec)
	e := &model.Endpoint{IP: netip.MustParseAddr(f[0]), Port: 80}
	for _, w := range f[1:] {
		switch {
		case w == "ready":
			e.Ready, e.Serving = true, true
		case w == "serving":
			e.Serving = true
		case w == "terminating":
			e.Terminating = true
		case w == "local":
			e.IsLocal = true
			e.NodeName = "n1"
		case strings.HasPrefix(w, "zonehint="):
			e.ZoneHints = append(e.ZoneHints, strings.TrimPrefix(w, "zonehint="))
		case strings.HasPrefix(w, "nodehint="):
			e.NodeHints = append(e.NodeHints, strings.TrimPrefix(w, "nodehint="))
		default:
			panic("bad spec word " + w)
		}
	}
	return e
}

func ips(eps []*model.Endpoint) string {
	if eps == nil {
		return "nil"
	}
	var s []string
	for _, e := range eps {
		s = append(s, e.IP.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestCategorize(t *testing.T) {
	node := &model.Node{Name: "n1", Zone: "a"}
	clusterSvc := &model.ServicePort{ClusterIP: netip.MustParseAddr("198.19.192.1")}
	itpLocal := &model.ServicePort{ClusterIP: netip.MustParseAddr("198.19.192.1"), InternalPolicyLocal: true}
	etpLocal := &model.ServicePort{ClusterIP: netip.MustParseAddr("198.19.192.1"), NodePort: 30000, ExternalPolicyLocal: true}
	bothLocal := &model.ServicePort{ClusterIP: netip.MustParseAddr("198.19.192.1"), NodePort: 30000, ExternalPolicyLocal: true, InternalPolicyLocal: true}

	cases := []struct {
		name                string
		svc                 *model.ServicePort
		eps                 []string
		cluster, local, all string
		hasAny              bool
	}{
		{"no endpoints", clusterSvc, nil, "nil", "nil", "nil", false},
		{"ready only", clusterSvc, []string{"198.18.1.1 ready", "198.18.2.1", "198.18.2.2 ready"}, "[198.18.1.1 198.18.2.2]", "nil", "[198.18.1.1 198.18.2.2]", true},
		{"terminating fallback", clusterSvc, []string{"198.18.1.1 serving terminating", "198.18.2.1 terminating", "198.18.2.2"}, "[198.18.1.1]", "nil", "[198.18.1.1]", true},
		{"ready beats terminating", clusterSvc, []string{"198.18.1.1 serving terminating", "198.18.2.2 ready"}, "[198.18.2.2]", "nil", "[198.18.2.2]", true},
		{"nothing serving", clusterSvc, []string{"198.18.1.1 terminating", "198.18.2.2"}, "[]", "nil", "[]", false},
		{"itp local with local", itpLocal, []string{"198.18.1.1 ready local", "198.18.2.2 ready"}, "nil", "[198.18.1.1]", "[198.18.1.1]", true},
		{"itp local none local", itpLocal, []string{"198.18.2.2 ready"}, "nil", "[]", "[]", true},
		{"itp local terminating local", itpLocal, []string{"198.18.1.1 serving terminating local", "198.18.2.2 ready"}, "nil", "[198.18.1.1]", "[198.18.1.1]", true},
		{"etp local union", etpLocal, []string{"198.18.1.1 ready local", "198.18.2.2 ready"}, "[198.18.1.1 198.18.2.2]", "[198.18.1.1]", "[198.18.1.1 198.18.2.2]", true},
		{"etp local terminating local merged", etpLocal, []string{"198.18.1.1 serving terminating local", "198.18.2.2 ready"}, "[198.18.2.2]", "[198.18.1.1]", "[198.18.1.1 198.18.2.2]", true},
		{"both local (external short-circuit needs cluster set)", bothLocal, []string{"198.18.1.1 ready local", "198.18.2.2 ready"}, "[198.18.1.1 198.18.2.2]", "[198.18.1.1]", "[198.18.1.1 198.18.2.2]", true},
		{"zone hints", clusterSvc, []string{"198.18.1.1 ready zonehint=a", "198.18.2.2 ready zonehint=b"}, "[198.18.1.1]", "nil", "[198.18.1.1]", true},
		{"zone hints missing on one", clusterSvc, []string{"198.18.1.1 ready zonehint=a", "198.18.2.2 ready"}, "[198.18.1.1 198.18.2.2]", "nil", "[198.18.1.1 198.18.2.2]", true},
		{"zone hints other zone only", clusterSvc, []string{"198.18.1.1 ready zonehint=b", "198.18.2.2 ready zonehint=b"}, "[198.18.1.1 198.18.2.2]", "nil", "[198.18.1.1 198.18.2.2]", true},
		{"node hints win", clusterSvc, []string{"198.18.1.1 ready nodehint=n1 zonehint=a", "198.18.1.2 ready nodehint=n2 zonehint=a"}, "[198.18.1.1]", "nil", "[198.18.1.1]", true},
		{"zone hint ignores unready", clusterSvc, []string{"198.18.1.1 ready zonehint=a", "198.18.2.2 zonehint=b"}, "[198.18.1.1]", "nil", "[198.18.1.1]", true},
		{"etp local with topology merges local", etpLocal, []string{"198.18.1.1 ready local zonehint=b", "198.18.2.2 ready zonehint=a"}, "[198.18.2.2]", "[198.18.1.1]", "[198.18.1.1 198.18.2.2]", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var eps []*model.Endpoint
			for _, s := range tc.eps {
				eps = append(eps, ep(s))
			}
			c := Categorize(eps, tc.svc, node)
			if got := ips(c.Cluster); got != tc.cluster {
				t.Errorf("Cluster = %s, want %s", got, tc.cluster)
			}
			if got := ips(c.Local); got != tc.local {
				t.Errorf("Local = %s, want %s", got, tc.local)
			}
			if got := ips(c.AllReachable); got != tc.all {
				t.Errorf("AllReachable = %s, want %s", got, tc.all)
			}
			if c.HasAny != tc.hasAny {
				t.Errorf("HasAny = %v, want %v", c.HasAny, tc.hasAny)
			}
		})
	}
}
