package render

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// step is one sync: a snapshot in modeltest's text form, rendered as a
// partial sync on top of the previous step unless full is set.
type step struct {
	lines    []string
	full     bool
	existing map[string][]string
}

type scenario struct {
	name   string
	family model.Family
	cfg    func(*Config)
	node   *model.Node
	steps  []step
}

const nodeName = "node1"

func baseConfig(f model.Family) *Config {
	c := &Config{
		Family:            f,
		MasqueradeBit:     14,
		RandomFully:       true,
		LocalDetector:     DetectLocalByCIDR("ClusterCIDR", netip.MustParsePrefix("198.18.0.0/16")),
		NodePortAddresses: NodePortAddresses{All: true},
		NodeIP:            netip.MustParseAddr("192.0.2.11"),
	}
	if f == model.IPv6 {
		c.LocalDetector = DetectLocalByCIDR("ClusterCIDR", netip.MustParsePrefix("2001:db8:10::/56"))
		c.NodeIP = netip.MustParseAddr("2001:db8:1::11")
	} else {
		c.LocalhostNodePorts = true
	}
	return c
}

func defaultNode() *model.Node {
	return &model.Node{Name: nodeName, Zone: "zone-a", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}}
}

func one(lines ...string) []step { return []step{{lines: lines}} }

// scenarios is the table of golden tests: every feature of iptables mode,
// each alone so that a diff points at one behaviour.
func scenarios() []scenario {
	manySvcs := []string{}
	for i := 0; i < 40; i++ {
		ip := netip.AddrFrom4([4]byte{198, 19, 192 + byte(i%3), byte(10 + i*5)})
		manySvcs = append(manySvcs,
			fmt.Sprintf("svc ns/s%02d TCP %s:80", i, ip),
			fmt.Sprintf("ep ns/s%02d 198.18.%d.%d:8080 ready", i, 1+i%2, 10+i))
	}
	manySvcs = append(manySvcs,
		"svc ns/ext TCP 198.19.200.1:443 externalIPs=203.0.113.7 lb=203.0.113.20",
		"ep ns/ext 198.18.1.99:8443 ready")

	return []scenario{
		{name: "clusterip-tcp-single-endpoint", steps: one(
			"svc default/web TCP 198.19.192.10:80",
			"ep default/web 198.18.1.2:8080 ready local")},
		{name: "clusterip-udp-three-endpoints-random", steps: one(
			"svc kube-system/dns:dns UDP 198.19.192.53:53",
			"ep kube-system/dns:dns 198.18.1.5:53 ready local",
			"ep kube-system/dns:dns 198.18.2.5:53 ready node=node2",
			"ep kube-system/dns:dns 198.18.2.6:53 ready node=node2")},
		// An endpoint chain (hairpin mark + DNAT) only for the endpoint on
		// this node and the one whose node is unknown; the endpoint on
		// node2 is DNATed from the Service chain.
		{name: "endpoint-chains-only-where-hairpin-is-possible", steps: one(
			"svc default/web TCP 198.19.192.12:80",
			"ep default/web 198.18.1.12:8080 ready local",
			"ep default/web 198.18.2.12:8080 ready node=node2",
			"ep default/web 192.0.2.200:8080 ready")},
		{name: "clusterip-sctp", steps: one(
			"svc telco/sig SCTP 198.19.192.30:3868",
			"ep telco/sig 198.18.2.30:3868 ready node=node2")},
		{name: "multi-port-service", steps: one(
			"svc default/app:http TCP 198.19.192.20:80",
			"svc default/app:https TCP 198.19.192.20:443",
			"svc default/app:metrics UDP 198.19.192.20:9100",
			"ep default/app:http 198.18.1.7:8080 ready local",
			"ep default/app:https 198.18.1.7:8443 ready local",
			"ep default/app:metrics 198.18.1.7:9100 ready local")},
		{name: "no-endpoints-reject", steps: one(
			"svc default/empty TCP 198.19.192.40:80 nodePort=30040 externalIPs=203.0.113.4 lb=203.0.113.40",
			"ep default/empty 198.18.2.40:8080 node=node2")},
		{name: "nodeport-all-addresses", steps: one(
			"svc default/np TCP 198.19.192.50:80 nodePort=30050",
			"ep default/np 198.18.2.50:8080 ready node=node2")},
		{name: "nodeport-specific-addresses", cfg: func(c *Config) {
			c.NodePortAddresses = NodePortAddresses{IPs: []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("127.0.0.1")}}
		}, steps: one(
			"svc default/np TCP 198.19.192.50:80 nodePort=30050",
			"ep default/np 198.18.2.50:8080 ready node=node2")},
		{name: "nodeport-localhost-disabled", cfg: func(c *Config) {
			c.LocalhostNodePorts = false
			c.NodePortAddresses = NodePortAddresses{IPs: []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("127.0.0.1")}}
		}, steps: one(
			"svc default/np TCP 198.19.192.50:80 nodePort=30050",
			"ep default/np 198.18.2.50:8080 ready node=node2")},
		{name: "nodeport-localhost-disabled-all", cfg: func(c *Config) { c.LocalhostNodePorts = false }, steps: one(
			"svc default/np UDP 198.19.192.51:53 nodePort=30053",
			"ep default/np 198.18.2.51:53 ready node=node2")},
		{name: "loadbalancer-with-source-ranges", steps: one(
			"svc default/lb TCP 198.19.192.60:80 nodePort=30060 lb=203.0.113.60 lbRanges=198.51.100.0/25,192.0.2.0/24",
			"ep default/lb 198.18.1.60:8080 ready local",
			"ep default/lb 198.18.2.60:8080 ready node=node2")},
		{name: "loadbalancer-source-ranges-exclude-node", steps: one(
			"svc default/lb TCP 198.19.192.61:80 nodePort=30061 lb=203.0.113.61 lbRanges=198.51.100.0/25",
			"ep default/lb 198.18.2.61:8080 ready node=node2")},
		{name: "external-ips", steps: one(
			"svc default/ext TCP 198.19.192.70:80 externalIPs=203.0.113.70,203.0.113.71",
			"ep default/ext 198.18.2.70:8080 ready node=node2")},
		{name: "etp-local-with-local-endpoint", steps: one(
			"svc default/lbl TCP 198.19.192.80:80 nodePort=30080 lb=203.0.113.80 etp=Local hc=32080",
			"ep default/lbl 198.18.1.80:8080 ready local",
			"ep default/lbl 198.18.2.80:8080 ready node=node2")},
		{name: "etp-local-no-local-endpoint", steps: one(
			"svc default/lbl TCP 198.19.192.81:80 nodePort=30081 lb=203.0.113.81 externalIPs=203.0.113.82 etp=Local hc=32081",
			"ep default/lbl 198.18.2.81:8080 ready node=node2")},
		{name: "etp-local-detect-none", cfg: func(c *Config) { c.LocalDetector = NoLocalDetector() }, steps: one(
			"svc default/lbl TCP 198.19.192.83:80 nodePort=30083 etp=Local",
			"ep default/lbl 198.18.1.83:8080 ready local")},
		{name: "itp-local-with-local-endpoint", steps: one(
			"svc default/itp TCP 198.19.192.90:80 itp=Local",
			"ep default/itp 198.18.1.90:8080 ready local",
			"ep default/itp 198.18.2.90:8080 ready node=node2")},
		{name: "itp-local-no-local-endpoint-drop", steps: one(
			"svc default/itp TCP 198.19.192.91:80 itp=Local",
			"ep default/itp 198.18.2.91:8080 ready node=node2")},
		{name: "itp-and-etp-local", steps: one(
			"svc default/both TCP 198.19.192.92:80 nodePort=30092 itp=Local etp=Local",
			"ep default/both 198.18.1.92:8080 ready local",
			"ep default/both 198.18.2.92:8080 ready node=node2")},
		{name: "terminating-fallback", steps: one(
			"svc default/roll TCP 198.19.192.100:80",
			"ep default/roll 198.18.1.100:8080 serving terminating local",
			"ep default/roll 198.18.2.100:8080 terminating node=node2",
			"ep default/roll 198.18.2.101:8080 node=node2")},
		{name: "terminating-ignored-when-ready-exists", steps: one(
			"svc default/roll TCP 198.19.192.101:80",
			"ep default/roll 198.18.1.100:8080 serving terminating local",
			"ep default/roll 198.18.2.102:8080 ready node=node2")},
		{name: "topology-zone-hints", steps: one(
			"svc default/topo TCP 198.19.192.110:80 td=PreferClose",
			"ep default/topo 198.18.1.110:8080 ready local zonehints=zone-a",
			"ep default/topo 198.18.2.110:8080 ready node=node2 zonehints=zone-b",
			"ep default/topo 198.18.3.110:8080 ready node=node3 zonehints=zone-a")},
		{name: "topology-node-hints", steps: one(
			"svc default/topo TCP 198.19.192.111:80 td=PreferSameNode",
			"ep default/topo 198.18.1.111:8080 ready local nodehints=node1 zonehints=zone-a",
			"ep default/topo 198.18.2.111:8080 ready node=node2 nodehints=node2 zonehints=zone-a")},
		{name: "session-affinity", steps: one(
			"svc default/sticky TCP 198.19.192.120:80 affinity=600",
			"ep default/sticky 198.18.1.120:8080 ready local",
			"ep default/sticky 198.18.2.120:8080 ready node=node2")},
		{name: "masquerade-all", cfg: func(c *Config) { c.MasqueradeAll = true }, steps: one(
			"svc default/web TCP 198.19.192.130:80",
			"ep default/web 198.18.1.130:8080 ready local")},
		{name: "detect-local-node-cidr", cfg: func(c *Config) {
			c.LocalDetector = DetectLocalByCIDR("NodeCIDR", netip.MustParsePrefix("198.18.1.0/24"))
		}, steps: one(
			"svc default/lbl TCP 198.19.192.131:80 nodePort=30131 etp=Local",
			"ep default/lbl 198.18.1.131:8080 ready local")},
		{name: "detect-local-bridge-interface", cfg: func(c *Config) { c.LocalDetector = DetectLocalByBridge("cbr0") }, steps: one(
			"svc default/lbl TCP 198.19.192.132:80 nodePort=30132 etp=Local",
			"ep default/lbl 198.18.1.132:8080 ready local")},
		{name: "detect-local-interface-prefix", cfg: func(c *Config) { c.LocalDetector = DetectLocalByInterfacePrefix("veth") }, steps: one(
			"svc default/lbl TCP 198.19.192.133:80 nodePort=30133 etp=Local",
			"ep default/lbl 198.18.1.133:8080 ready local")},
		{name: "masquerade-bit-and-no-random-fully", cfg: func(c *Config) { c.MasqueradeBit = 10; c.RandomFully = false }, steps: one(
			"svc default/web TCP 198.19.192.134:80",
			"ep default/web 198.18.1.134:8080 ready local")},
		{name: "conntrack-tcp-be-liberal", cfg: func(c *Config) { c.ConntrackTCPBeLiberal = true }, steps: one(
			"svc default/web TCP 198.19.192.135:80",
			"ep default/web 198.18.1.135:8080 ready local")},
		{name: "ipv6-family", family: model.IPv6, steps: one(
			"svc default/v6 TCP [2001:db8:20::10]:80 nodePort=30610 lb=2001:db8:30::10 externalIPs=2001:db8:30::11",
			"ep default/v6 [2001:db8:10:1::10]:8080 ready local",
			"ep default/v6 [2001:db8:10:2::10]:8080 ready node=node2")},
		{name: "dispatch-tree-many-services", cfg: func(c *Config) { c.DispatchLeafMax = 4 }, steps: one(manySvcs...)},
		{name: "batched-full-sync", cfg: func(c *Config) { c.MaxBatchServices = 2 }, steps: []step{
			{lines: []string{
				"svc ns/a TCP 198.19.192.190:80", "ep ns/a 198.18.1.190:8080 ready local",
				"svc ns/b UDP 198.19.192.191:53", "ep ns/b 198.18.2.191:53 ready node=node2",
				"svc ns/c TCP 198.19.192.192:80 nodePort=30192", "ep ns/c 198.18.2.192:8080 ready node=node2",
				"svc ns/d TCP 198.19.192.193:80", "ep ns/d 198.18.1.193:8080 ready local",
				"svc ns/e TCP 198.19.192.194:80",
			}},
			// Few changes: one batch again.
			{lines: []string{
				"svc ns/a TCP 198.19.192.190:80", "ep ns/a 198.18.1.190:8080 ready local",
				"svc ns/b UDP 198.19.192.191:53", "ep ns/b 198.18.2.192:53 ready node=node2",
				"svc ns/c TCP 198.19.192.192:80 nodePort=30192", "ep ns/c 198.18.2.192:8080 ready node=node2",
				"svc ns/d TCP 198.19.192.193:80", "ep ns/d 198.18.1.193:8080 ready local",
				"svc ns/e TCP 198.19.192.194:80",
			}},
		}},
		{name: "large-cluster-drops-endpoint-comments", cfg: func(c *Config) { c.LargeClusterEndpoints = 2 }, steps: one(
			"svc default/big TCP 198.19.192.140:80",
			"ep default/big 198.18.1.140:8080 ready local",
			"ep default/big 198.18.2.140:8080 ready node=node2",
			"ep default/big 198.18.2.141:8080 ready node=node2")},
		{name: "full-sync-deletes-stale-chains", steps: []step{{
			lines: []string{"svc default/web TCP 198.19.192.150:80", "ep default/web 198.18.1.150:8080 ready local"},
			existing: map[string][]string{
				"nat":    {"PREROUTING", "KPR-SERVICES", "KPR-SVC-AAAAAAAAAAAAAAAA", "KPR-SEP-BBBBBBBBBBBBBBBB", "KPR-CANARY", "KUBE-SVC-CCCCCCCCCCCCCCCC", "DOCKER"},
				"filter": {"KPR-SERVICES", "KUBE-FIREWALL"},
			},
		}}},
		{name: "partial-endpoint-change", steps: []step{
			{lines: []string{
				"svc default/a TCP 198.19.192.160:80", "ep default/a 198.18.1.160:8080 ready local",
				"svc default/b UDP 198.19.192.161:53", "ep default/b 198.18.1.161:53 ready local", "ep default/b 198.18.2.161:53 ready node=node2",
			}},
			{lines: []string{
				"svc default/a TCP 198.19.192.160:80", "ep default/a 198.18.1.160:8080 ready local",
				"svc default/b UDP 198.19.192.161:53", "ep default/b 198.18.2.161:53 ready node=node2", "ep default/b 198.18.2.162:53 ready node=node2",
			}},
			// Nothing changed: the batch is empty apart from the table headers.
			{lines: []string{
				"svc default/a TCP 198.19.192.160:80", "ep default/a 198.18.1.160:8080 ready local",
				"svc default/b UDP 198.19.192.161:53", "ep default/b 198.18.2.161:53 ready node=node2", "ep default/b 198.18.2.162:53 ready node=node2",
			}},
		}},
		{name: "partial-service-removed-and-added", steps: []step{
			{lines: []string{
				"svc default/a TCP 198.19.192.170:80 nodePort=30170", "ep default/a 198.18.1.170:8080 ready local",
				"svc default/b TCP 198.19.192.171:80", "ep default/b 198.18.1.171:8080 ready local",
			}},
			{lines: []string{
				"svc default/b TCP 198.19.192.171:80", "ep default/b 198.18.1.171:8080 ready local",
				"svc default/c TCP 198.19.192.172:80 affinity=10800", "ep default/c 198.18.2.172:8080 ready node=node2",
			}},
		}},
		{name: "partial-endpoints-go-to-zero", steps: []step{
			{lines: []string{"svc default/a UDP 198.19.192.180:53", "ep default/a 198.18.1.180:53 ready local"}},
			{lines: []string{"svc default/a UDP 198.19.192.180:53"}},
			{lines: []string{"svc default/a UDP 198.19.192.180:53", "ep default/a 198.18.2.180:53 ready node=node2"}},
		}},
	}
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			got := runScenario(t, sc)
			path := filepath.Join("testdata", sc.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run `go test ./internal/iptables/render -run TestGolden -update` to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendered batch differs from %s (rerun with -update if the change is intended):\n%s", path, diff(string(want), string(got)))
			}
		})
	}
}

func runScenario(t *testing.T, sc scenario) []byte {
	t.Helper()
	fam := sc.family
	if fam == 0 {
		fam = model.IPv4
	}
	cfg := baseConfig(fam)
	if sc.cfg != nil {
		sc.cfg(cfg)
	}
	node := sc.node
	if node == nil {
		node = defaultNode()
	}
	var out bytes.Buffer
	var prevSnap *model.Snapshot
	var prevState *State
	for i, st := range sc.steps {
		snap, err := modeltest.Build(fam, nodeName, st.lines...)
		if err != nil {
			t.Fatal(err)
		}
		if prevSnap != nil {
			snap = modeltest.Reuse(prevSnap, snap)
		}
		in := Input{Snapshot: snap, Node: node, Config: cfg, Existing: st.existing}
		if !st.full {
			in.Prev = prevState
		}
		res := Render(in)
		checkInvariants(t, res)
		kind := "partial"
		if res.Full {
			kind = "full"
		}
		fmt.Fprintf(&out, "# step %d (%s sync): %d lines, %d Service ports rendered, %d chains deleted\n",
			i+1, kind, res.Stats.Lines, res.Stats.ServicesRendered, res.Stats.ChainsDeleted)
		for j, b := range res.Batches {
			if len(res.Batches) > 1 {
				fmt.Fprintf(&out, "# batch %d/%d\n", j+1, len(res.Batches))
			}
			out.Write(b)
		}
		prevSnap, prevState = snap, res.State
	}
	return out.Bytes()
}

// checkInvariants holds for every batch: chain names within iptables'
// limit, every chain written to or deleted is declared first, and nothing
// outside kpr's prefix is ever declared or deleted.
func checkInvariants(t *testing.T, res *Result) {
	t.Helper()
	if len(res.Batches) == 1 && !bytes.Equal(res.Data, res.Batches[0]) {
		t.Errorf("Data is not the single batch")
	}
	all := bytes.Join(res.Batches, nil)
	declared := map[string]bool{}
	for i, line := range strings.Split(string(all), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case strings.HasPrefix(f[0], ":"):
			c := strings.TrimPrefix(f[0], ":")
			if !IsOurs(c) {
				t.Errorf("line %d declares foreign chain %q", i+1, c)
			}
			if len(c) > MaxChainNameLen {
				t.Errorf("line %d: chain %q longer than %d", i+1, c, MaxChainNameLen)
			}
			declared[c] = true
		case f[0] == "-A" || f[0] == "-X":
			if !declared[f[1]] {
				t.Errorf("line %d uses undeclared chain %q: %s", i+1, f[1], line)
			}
		case f[0] == "*filter", f[0] == "*nat", f[0] == "COMMIT":
			declared = map[string]bool{}
		default:
			t.Errorf("line %d: unexpected %q", i+1, line)
		}
	}
	if res.Stats.Bytes != len(all) {
		t.Errorf("Stats.Bytes = %d, batches hold %d", res.Stats.Bytes, len(all))
	}
	if n := strings.Count(string(all), "\n"); n != res.Stats.Lines {
		t.Errorf("Stats.Lines = %d, batch has %d lines", res.Stats.Lines, n)
	}
}

// diff is a small line diff for failure messages.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n- %s\n+ %s\n", i+1, wl, gl)
		}
	}
	return b.String()
}
