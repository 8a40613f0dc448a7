package render

import (
	"fmt"
	"net/netip"

	"github.com/kpr-proxy/kpr/internal/model"
)

// byteSource turns fuzz input into decisions; when it runs dry it yields
// zeros, so every input is a valid (if small) scenario.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) next() byte {
	if s.i >= len(s.b) {
		return 0
	}
	v := s.b[s.i]
	s.i++
	return v
}

func (s *byteSource) intn(n int) int { return int(s.next()) % n }
func (s *byteSource) bool() bool     { return s.next()&1 == 1 }

// genCase is a random rendering case: a family, a config and a snapshot,
// drawn only from GUIDE.md's address plan.
type genCase struct {
	cfg  *Config
	node *model.Node
	snap *model.Snapshot
}

func genConfig(s *byteSource, fam model.Family) (*Config, *model.Node) {
	cfg := baseConfig(fam)
	node := defaultNode()
	if fam == model.IPv6 {
		node.Addresses = []netip.Addr{netip.MustParseAddr("2001:db8:1::11")}
	}
	cfg.MasqueradeAll = s.intn(8) == 0
	cfg.RandomFully = s.bool()
	cfg.MasqueradeBit = s.intn(32)
	cfg.ConntrackTCPBeLiberal = s.bool()
	cfg.LocalhostNodePorts = fam == model.IPv4 && s.bool()
	cfg.DispatchLeafMax = 1 + s.intn(8)
	cfg.LargeClusterEndpoints = 1 + s.intn(40)
	if s.bool() {
		cfg.MaxBatchServices = 1 + s.intn(4)
	}
	switch s.intn(5) {
	case 0:
		cfg.LocalDetector = NoLocalDetector()
	case 1:
		cfg.LocalDetector = DetectLocalByBridge("cbr0")
	case 2:
		cfg.LocalDetector = DetectLocalByInterfacePrefix("veth")
	case 3:
		p := "198.18.1.0/24"
		if fam == model.IPv6 {
			p = "2001:db8:10:1::/64"
		}
		cfg.LocalDetector = DetectLocalByCIDR("NodeCIDR", netip.MustParsePrefix(p))
	}
	if s.bool() {
		ips := []netip.Addr{cfg.NodeIP}
		if fam == model.IPv4 {
			ips = append(ips, netip.MustParseAddr("127.0.0.1"))
		} else {
			ips = append(ips, netip.MustParseAddr("::1"))
		}
		cfg.NodePortAddresses = NodePortAddresses{IPs: ips}
	}
	return cfg, node
}

func addr(fam model.Family, kind string, n int) netip.Addr {
	if fam == model.IPv4 {
		switch kind {
		case "svc":
			return netip.AddrFrom4([4]byte{198, 19, 192 + byte(n/250%64), byte(1 + n%250)})
		case "pod":
			return netip.AddrFrom4([4]byte{198, 18, byte(1 + n/250%3), byte(1 + n%250)})
		case "lb":
			return netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + n%250)})
		case "client":
			return netip.AddrFrom4([4]byte{198, 51, 100, byte(n % 256)})
		}
	}
	switch kind {
	case "svc":
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:20::%x", 1+n%4000))
	case "pod":
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:10:%x::%x", 1+n/250%3, 1+n%250))
	case "lb":
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:30::%x", 1+n%250))
	}
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", 100+n%100))
}

// genSnapshot draws up to 12 Services with up to 4 ports and 6 endpoints each.
func genSnapshot(s *byteSource, fam model.Family) *model.Snapshot {
	snap := &model.Snapshot{
		Family:    fam,
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]*model.Endpoint{},
	}
	protos := []model.Protocol{model.TCP, model.UDP, model.SCTP}
	nsvc := s.intn(13)
	for i := 0; i < nsvc; i++ {
		clusterIP := addr(fam, "svc", int(s.next())*7+i)
		var ext, lb []netip.Addr
		for k := s.intn(3); k > 0; k-- {
			ext = append(ext, addr(fam, "lb", int(s.next())))
		}
		for k := s.intn(3); k > 0; k-- {
			lb = append(lb, addr(fam, "lb", 100+int(s.next())))
		}
		var ranges []netip.Prefix
		for k := s.intn(3); k > 0; k-- {
			a := addr(fam, "client", int(s.next()))
			bits := 24
			if fam == model.IPv6 {
				bits = 64
			}
			ranges = append(ranges, netip.PrefixFrom(a, bits).Masked())
		}
		etp, itp := s.intn(3) == 0, s.intn(4) == 0
		affinity := int32(0)
		if s.intn(4) == 0 {
			affinity = int32(1 + s.intn(200))
		}
		nodePorts := s.bool()
		hc := uint16(0)
		if etp && len(lb) > 0 {
			hc = uint16(32000 + i)
		}
		nports := 1 + s.intn(4)
		for p := 0; p < nports; p++ {
			proto := protos[s.intn(3)]
			name := model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("svc%d", i), Port: fmt.Sprintf("p%d", p), Protocol: proto}
			sp := &model.ServicePort{
				Name: name, ClusterIP: clusterIP, Port: uint16(80 + p), Protocol: proto,
				ExternalIPs: ext, LoadBalancerVIPs: lb, LoadBalancerSourceRanges: ranges,
				InternalPolicyLocal: itp, AffinityTimeoutSeconds: affinity, HealthCheckNodePort: hc,
			}
			if nodePorts {
				sp.NodePort = uint16(30000 + i*4 + p)
			}
			sp.ExternalPolicyLocal = etp && sp.ExternallyAccessible()
			snap.Services[name] = sp
			var eps []*model.Endpoint
			seen := map[netip.Addr]bool{}
			for e := s.intn(7); e > 0; e-- {
				ip := addr(fam, "pod", int(s.next()))
				if seen[ip] {
					continue
				}
				seen[ip] = true
				c := s.next()
				ep := &model.Endpoint{IP: ip, Port: uint16(8080 + p), Ready: c&1 == 1, Terminating: c&2 == 2, NodeName: fmt.Sprintf("node%d", 1+c>>2&1)}
				ep.Serving = ep.Ready || c&4 == 4
				ep.IsLocal = ep.NodeName == nodeName
				if c&8 == 8 {
					ep.ZoneHints = []string{[]string{"zone-a", "zone-b"}[c>>4&1]}
				}
				eps = append(eps, ep)
			}
			if len(eps) > 0 {
				sortEndpoints(eps)
				snap.Endpoints[name] = eps
			}
		}
	}
	return snap
}

func sortEndpoints(eps []*model.Endpoint) {
	for i := 1; i < len(eps); i++ {
		for j := i; j > 0 && eps[j].IP.Less(eps[j-1].IP); j-- {
			eps[j], eps[j-1] = eps[j-1], eps[j]
		}
	}
}

// mutate derives the next snapshot from prev the way the change tracker
// would: most Service ports are untouched (shared pointers), some change
// endpoints, some are removed, some added.
func mutate(s *byteSource, prev *model.Snapshot) *model.Snapshot {
	fresh := genSnapshot(s, prev.Family)
	next := &model.Snapshot{
		Family:    prev.Family,
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]*model.Endpoint{},
	}
	for name, sp := range prev.Services {
		switch s.intn(4) {
		case 0: // removed
			continue
		case 1: // endpoints replaced
			next.Services[name] = sp
			if eps := fresh.Endpoints[name]; len(eps) > 0 {
				next.Endpoints[name] = eps
			}
			continue
		}
		next.Services[name] = sp
		if eps, ok := prev.Endpoints[name]; ok {
			next.Endpoints[name] = eps
		}
	}
	for name, sp := range fresh.Services {
		if _, ok := next.Services[name]; !ok && s.bool() {
			next.Services[name] = sp
			if eps := fresh.Endpoints[name]; len(eps) > 0 {
				next.Endpoints[name] = eps
			}
		}
	}
	return next
}
