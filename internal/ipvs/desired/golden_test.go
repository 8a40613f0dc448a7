package desired

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

const nodeName = "node1"

func baseConfig(f model.Family) *Config {
	if f == model.IPv6 {
		return &Config{
			Family: f, MasqueradeBit: 14, RandomFully: true,
			LocalDetector: render.DetectLocalByCIDR("ClusterCIDR", netip.MustParsePrefix("2001:db8:10::/56")),
			NodePortIPs:   []netip.Addr{netip.MustParseAddr("2001:db8:1::11")},
			NodeAddrs:     []netip.Addr{netip.MustParseAddr("2001:db8:1::11")},
			NodeIP:        netip.MustParseAddr("2001:db8:1::11"),
		}
	}
	return &Config{
		Family: f, MasqueradeBit: 14, RandomFully: true,
		LocalDetector: render.DetectLocalByCIDR("ClusterCIDR", netip.MustParsePrefix("198.18.0.0/16")),
		NodePortIPs:   []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.111")},
		NodeAddrs:     []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.111")},
		NodeIP:        netip.MustParseAddr("192.0.2.11"),
	}
}

func defaultNode() *model.Node {
	return &model.Node{Name: nodeName, Zone: "zone-a", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}}
}

type scenario struct {
	name   string
	family model.Family
	cfg    func(*Config)
	node   *model.Node
	lines  []string
}

// scenarios is the table of golden tests: every feature of the IPVS mode,
// each alone so that a diff points at one behaviour.
func scenarios() []scenario {
	return []scenario{
		{name: "clusterip-tcp", lines: []string{
			"svc default/web TCP 198.19.192.10:80",
			"ep default/web 198.18.1.2:8080 ready local",
			"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "clusterip-udp", lines: []string{
			"svc kube-system/dns:dns UDP 198.19.192.53:53",
			"ep kube-system/dns:dns 198.18.1.5:53 ready local",
			"ep kube-system/dns:dns 198.18.2.5:53 ready node=node2",
			"ep kube-system/dns:dns 198.18.3.5:53 ready node=node3"}},
		{name: "clusterip-sctp", lines: []string{
			"svc default/sig SCTP 198.19.192.20:3868",
			"ep default/sig 198.18.2.7:3868 ready node=node2"}},
		{name: "multi-port", lines: []string{
			"svc default/web:http TCP 198.19.192.10:80",
			"svc default/web:https TCP 198.19.192.10:443",
			"ep default/web:http 198.18.1.2:8080 ready local",
			"ep default/web:https 198.18.1.2:8443 ready local"}},
		{name: "no-endpoints", lines: []string{
			"svc default/empty TCP 198.19.192.30:80 nodePort=30030"}},
		{name: "nodeport-tcp", lines: []string{
			"svc default/np TCP 198.19.192.40:80 nodePort=30080",
			"ep default/np 198.18.1.2:8080 ready local",
			"ep default/np 198.18.2.2:8080 ready node=node2"}},
		{name: "nodeport-udp-sctp", lines: []string{
			"svc default/u UDP 198.19.192.41:53 nodePort=30053",
			"svc default/s SCTP 198.19.192.42:3868 nodePort=30868",
			"ep default/u 198.18.2.2:53 ready node=node2",
			"ep default/s 198.18.2.3:3868 ready node=node2"}},
		{name: "nodeport-specific-addresses",
			cfg: func(c *Config) { c.NodePortIPs = []netip.Addr{netip.MustParseAddr("192.0.2.111")} },
			lines: []string{
				"svc default/np TCP 198.19.192.40:80 nodePort=30080",
				"ep default/np 198.18.2.2:8080 ready node=node2"}},
		{name: "loadbalancer-source-ranges", lines: []string{
			// The node's IP is in the first Service's ranges, not in the
			// second's.
			"svc default/lb TCP 198.19.192.50:80 nodePort=30050 lb=203.0.113.20 lbRanges=198.51.100.0/24,192.0.2.0/24",
			"svc default/lb2 TCP 198.19.192.51:443 lb=203.0.113.21 lbRanges=198.51.100.7/32",
			"ep default/lb 198.18.2.2:8080 ready node=node2",
			"ep default/lb2 198.18.2.3:8443 ready node=node2"}},
		{name: "loadbalancer-source-range-everyone", lines: []string{
			"svc default/lb TCP 198.19.192.50:80 lb=203.0.113.20 lbRanges=0.0.0.0/0",
			"ep default/lb 198.18.2.2:8080 ready node=node2"}},
		{name: "external-ips", lines: []string{
			// 192.0.2.111 is a node address: not bound to the link.
			"svc default/ext TCP 198.19.192.60:80 externalIPs=203.0.113.7,192.0.2.111",
			"ep default/ext 198.18.2.2:8080 ready node=node2"}},
		{name: "etp-local-with-local-endpoint", lines: []string{
			"svc default/loc TCP 198.19.192.70:80 nodePort=30070 lb=203.0.113.30 externalIPs=203.0.113.31 etp=Local hc=32000",
			"ep default/loc 198.18.1.2:8080 ready local",
			"ep default/loc 198.18.2.2:8080 ready node=node2"}},
		{name: "etp-local-no-local-endpoint", lines: []string{
			"svc default/loc TCP 198.19.192.70:80 nodePort=30070 lb=203.0.113.30 externalIPs=203.0.113.31 etp=Local hc=32000",
			"ep default/loc 198.18.2.2:8080 ready node=node2"}},
		{name: "etp-local-no-detector",
			cfg: func(c *Config) { c.LocalDetector = render.NoLocalDetector() },
			lines: []string{
				"svc default/loc TCP 198.19.192.70:80 nodePort=30070 etp=Local",
				"ep default/loc 198.18.2.2:8080 ready node=node2"}},
		{name: "itp-local", lines: []string{
			"svc default/with TCP 198.19.192.80:80 itp=Local",
			"ep default/with 198.18.1.2:8080 ready local",
			"ep default/with 198.18.2.2:8080 ready node=node2",
			"svc default/without TCP 198.19.192.81:80 itp=Local",
			"ep default/without 198.18.2.3:8080 ready node=node2"}},
		{name: "terminating-fallback", lines: []string{
			"svc default/roll TCP 198.19.192.90:80",
			"ep default/roll 198.18.1.2:8080 serving terminating local",
			"ep default/roll 198.18.2.2:8080 serving terminating node=node2",
			"ep default/roll 198.18.2.3:8080 terminating node=node2"}},
		{name: "terminating-ignored-when-ready-exists", lines: []string{
			"svc default/roll TCP 198.19.192.90:80",
			"ep default/roll 198.18.1.2:8080 serving terminating local",
			"ep default/roll 198.18.2.2:8080 ready node=node2"}},
		{name: "topology-zone-hints", lines: []string{
			"svc default/topo TCP 198.19.192.100:80 td=PreferClose",
			"ep default/topo 198.18.1.2:8080 ready local zone=zone-a zonehints=zone-a",
			"ep default/topo 198.18.2.2:8080 ready node=node2 zone=zone-b zonehints=zone-b",
			"ep default/topo 198.18.3.2:8080 ready node=node3 zone=zone-a zonehints=zone-a"}},
		{name: "topology-node-hints", lines: []string{
			"svc default/topo TCP 198.19.192.100:80 td=PreferSameNode",
			"ep default/topo 198.18.1.2:8080 ready local nodehints=node1",
			"ep default/topo 198.18.2.2:8080 ready node=node2 nodehints=node2"}},
		{name: "session-affinity", lines: []string{
			"svc default/sticky TCP 198.19.192.110:80 nodePort=30110 affinity=10800",
			"ep default/sticky 198.18.2.2:8080 ready node=node2"}},
		{name: "scheduler-mh",
			cfg: func(c *Config) { c.Scheduler = "mh" },
			lines: []string{
				"svc default/web TCP 198.19.192.10:80 affinity=60",
				"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "scheduler-lc",
			cfg: func(c *Config) { c.Scheduler = "lc" },
			lines: []string{
				"svc default/web TCP 198.19.192.10:80",
				"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "masquerade-all",
			cfg: func(c *Config) { c.MasqueradeAll = true; c.MasqueradeBit = 5; c.RandomFully = false },
			lines: []string{
				"svc default/web TCP 198.19.192.10:80",
				"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "detect-local-bridge",
			cfg: func(c *Config) { c.LocalDetector = render.DetectLocalByBridge("cbr0") },
			lines: []string{
				"svc default/web TCP 198.19.192.10:80",
				"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "detect-local-none",
			cfg: func(c *Config) { c.LocalDetector = render.NoLocalDetector() },
			lines: []string{
				"svc default/web TCP 198.19.192.10:80",
				"ep default/web 198.18.2.2:8080 ready node=node2"}},
		{name: "conflicting-external-ip", lines: []string{
			"svc default/a TCP 198.19.192.10:80 externalIPs=203.0.113.7",
			"svc default/b TCP 198.19.192.11:80 externalIPs=203.0.113.7",
			"ep default/a 198.18.2.2:8080 ready node=node2",
			"ep default/b 198.18.2.3:8080 ready node=node2"}},
		{name: "ipv6", family: model.IPv6,
			node: &model.Node{Name: nodeName, Zone: "zone-a", Addresses: []netip.Addr{netip.MustParseAddr("2001:db8:1::11")}},
			lines: []string{
				"svc default/web TCP [2001:db8:20::a]:80 nodePort=30080 lb=2001:db8:30::5 lbRanges=2001:db8:1::/64 etp=Local",
				"ep default/web [2001:db8:10:1::2]:8080 ready local",
				"ep default/web [2001:db8:10:2::2]:8080 ready node=node2",
				"svc default/dns UDP [2001:db8:20::53]:53",
				"ep default/dns [2001:db8:10:2::5]:53 ready node=node2"}},
	}
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			fam := sc.family
			if fam == 0 {
				fam = model.IPv4
			}
			snap, err := modeltest.Build(fam, nodeName, sc.lines...)
			if err != nil {
				t.Fatal(err)
			}
			cfg := baseConfig(fam)
			if sc.cfg != nil {
				sc.cfg(cfg)
			}
			node := sc.node
			if node == nil {
				node = defaultNode()
			}
			got := Render(snap, node, cfg).Dump(DefaultLink)
			// Rendering must be deterministic.
			if again := Render(snap, node, cfg).Dump(DefaultLink); again != got {
				t.Fatalf("two renders differ:\n%s\n---\n%s", got, again)
			}
			path := filepath.Join("testdata", sc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if string(want) != got {
				t.Errorf("%s differs from the golden file (go test -update rewrites it)\n--- want\n%s\n--- got\n%s", path, want, diffHint(string(want), got))
			}
		})
	}
}

// diffHint returns got with the first differing line marked.
func diffHint(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range gl {
		if i >= len(wl) || wl[i] != gl[i] {
			gl[i] = ">>> " + gl[i]
			break
		}
	}
	return strings.Join(gl, "\n")
}
