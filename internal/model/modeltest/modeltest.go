// Package modeltest builds Snapshots from a compact text form for tests, so
// that a scenario reads like what an operator would describe:
//
//	svc default/web:http TCP 198.19.192.10:80 nodePort=30080 etp=Local
//	ep  default/web:http 198.18.1.2:8080 ready local zone=a
//
// Service words: <ns>/<name>[:<port name>] <TCP|UDP|SCTP> <clusterIP>:<port>
// then any of nodePort=N externalIPs=a,b lb=a,b lbRanges=cidr,cidr etp=Local
// itp=Local hc=N affinity=SECONDS td=PreferClose.
//
// Endpoint words: <service port name> <ip>:<port> then any of ready,
// serving, terminating (ready implies serving), local, node=NAME, zone=Z,
// zonehints=a,b, nodehints=n1,n2. An endpoint that is "local" gets the node
// name given to Build.
package modeltest

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Build parses lines ("svc ..." / "ep ...", blank lines and "#" comments
// ignored) into a Snapshot of the given family.
func Build(family model.Family, nodeName string, lines ...string) (*model.Snapshot, error) {
	s := &model.Snapshot{
		Family:    family,
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]*model.Endpoint{},
	}
	for _, raw := range lines {
		for _, line := range strings.Split(raw, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			f := strings.Fields(line)
			var err error
			switch f[0] {
			case "svc":
				err = parseService(s, f[1:])
			case "ep":
				err = parseEndpoint(s, nodeName, f[1:])
			default:
				err = fmt.Errorf("unknown kind %q", f[0])
			}
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
		}
	}
	for name, eps := range s.Endpoints {
		sort.Slice(eps, func(i, j int) bool {
			if c := eps[i].IP.Compare(eps[j].IP); c != 0 {
				return c < 0
			}
			return eps[i].Port < eps[j].Port
		})
		s.Endpoints[name] = eps
	}
	return s, nil
}

// MustBuild is Build that panics on error.
func MustBuild(family model.Family, nodeName string, lines ...string) *model.Snapshot {
	s, err := Build(family, nodeName, lines...)
	if err != nil {
		panic(err)
	}
	return s
}

// ParseName parses "ns/name[:port]" plus a protocol.
func ParseName(s string, proto model.Protocol) (model.ServicePortName, error) {
	nsName, port, _ := strings.Cut(s, ":")
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok || ns == "" || name == "" {
		return model.ServicePortName{}, fmt.Errorf("bad service port name %q", s)
	}
	return model.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: proto}, nil
}

func parseService(s *model.Snapshot, f []string) error {
	if len(f) < 3 {
		return fmt.Errorf("want: svc ns/name[:port] PROTO ip:port [options]")
	}
	proto := model.Protocol(f[1])
	name, err := ParseName(f[0], proto)
	if err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(f[2])
	if err != nil {
		return err
	}
	sp := &model.ServicePort{Name: name, ClusterIP: ap.Addr(), Port: ap.Port(), Protocol: proto}
	for _, opt := range f[3:] {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "nodePort":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return err
			}
			sp.NodePort = uint16(n)
		case "hc":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return err
			}
			sp.HealthCheckNodePort = uint16(n)
		case "externalIPs":
			if sp.ExternalIPs, err = addrs(v); err != nil {
				return err
			}
		case "lb":
			if sp.LoadBalancerVIPs, err = addrs(v); err != nil {
				return err
			}
		case "lbRanges":
			for _, c := range strings.Split(v, ",") {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					return err
				}
				sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, p)
			}
		case "etp":
			sp.ExternalPolicyLocal = v == "Local"
		case "itp":
			sp.InternalPolicyLocal = v == "Local"
		case "affinity":
			n, err := strconv.Atoi(v)
			if err != nil {
				return err
			}
			sp.AffinityTimeoutSeconds = int32(n)
		case "td":
			sp.TrafficDistribution = v
		default:
			return fmt.Errorf("unknown service option %q", k)
		}
	}
	if sp.ExternalPolicyLocal && !sp.ExternallyAccessible() {
		sp.ExternalPolicyLocal = false // as the change tracker does
	}
	s.Services[name] = sp
	return nil
}

func parseEndpoint(s *model.Snapshot, nodeName string, f []string) error {
	if len(f) < 2 {
		return fmt.Errorf("want: ep ns/name[:port] ip:port [conditions]")
	}
	// The protocol comes from the Service if it exists, else TCP.
	var name model.ServicePortName
	found := false
	for n := range s.Services {
		if n2, err := ParseName(f[0], n.Protocol); err == nil && n2 == n {
			name, found = n, true
			break
		}
	}
	if !found {
		var err error
		if name, err = ParseName(f[0], model.TCP); err != nil {
			return err
		}
	}
	ap, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return err
	}
	ep := &model.Endpoint{IP: ap.Addr(), Port: ap.Port()}
	for _, w := range f[2:] {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "ready":
			ep.Ready, ep.Serving = true, true
		case "serving":
			ep.Serving = true
		case "terminating":
			ep.Terminating = true
		case "local":
			ep.IsLocal, ep.NodeName = true, nodeName
		case "node":
			ep.NodeName = v
			ep.IsLocal = v == nodeName
		case "zone":
			ep.Zone = v
		case "zonehints":
			ep.ZoneHints = strings.Split(v, ",")
		case "nodehints":
			ep.NodeHints = strings.Split(v, ",")
		default:
			return fmt.Errorf("unknown endpoint word %q", w)
		}
	}
	s.Endpoints[name] = append(s.Endpoints[name], ep)
	return nil
}

func addrs(v string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range strings.Split(v, ",") {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil, err
		}
		out = append(out, ip)
	}
	return out, nil
}

// Reuse returns a copy of next in which every Service port that is equal
// (by value) to the one in prev shares prev's pointers, as the real change
// tracker guarantees. Tests of partial syncs build each step from text and
// pass it through Reuse.
func Reuse(prev, next *model.Snapshot) *model.Snapshot {
	out := &model.Snapshot{
		Family:    next.Family,
		Services:  make(map[model.ServicePortName]*model.ServicePort, len(next.Services)),
		Endpoints: make(map[model.ServicePortName][]*model.Endpoint, len(next.Endpoints)),
	}
	for n, sp := range next.Services {
		if p, ok := prev.Services[n]; ok && fmt.Sprintf("%+v", *p) == fmt.Sprintf("%+v", *sp) {
			sp = p
		}
		out.Services[n] = sp
	}
	for n, eps := range next.Endpoints {
		if p, ok := prev.Endpoints[n]; ok && sameEndpoints(p, eps) {
			eps = p
		}
		out.Endpoints[n] = eps
	}
	return out
}

func sameEndpoints(a, b []*model.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if fmt.Sprintf("%+v", *a[i]) != fmt.Sprintf("%+v", *b[i]) {
			return false
		}
	}
	return true
}
