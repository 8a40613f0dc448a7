package watch

import (
	"fmt"
	"slices"
	"strconv"

	discovery "k8s.io/api/discovery/v1"

	"github.com/kpr-proxy/kpr/internal/model"
)

// sliceEntry is an EndpointSlice converted to model values: what the tracker
// keeps instead of the API object.
type sliceEntry struct {
	name    string // EndpointSlice name
	service string // kubernetes.io/service-name (same namespace)
	family  model.Family
	ports   []slicePort
}

// slicePort is one port of a slice with its endpoints, sorted by (IP, Port)
// and de-duplicated, ready to be published as is when the Service has a
// single slice.
type slicePort struct {
	name  string
	proto model.Protocol
	eps   []*model.Endpoint
}

// sliceFamily maps an EndpointSlice address type to a family; FQDN slices
// have none and are ignored, as kube-proxy does.
func sliceFamily(t discovery.AddressType) (model.Family, bool) {
	switch t {
	case discovery.AddressTypeIPv4:
		return model.IPv4, true
	case discovery.AddressTypeIPv6:
		return model.IPv6, true
	}
	return 0, false
}

// convertSlice converts an EndpointSlice the way kube-proxy's
// EndpointSliceCache does (first address only, conditions defaulted, hints
// kept, IsLocal from the node name), but validates what kube-proxy assumes
// the apiserver validated: a bad port or endpoint is skipped and reported,
// the rest is kept. The caller has checked the address type and the
// service-name label.
func convertSlice(es *discovery.EndpointSlice, fam model.Family, service, nodeName string) (*sliceEntry, []problem) {
	var probs []problem
	e := &sliceEntry{name: es.Name, service: service, family: fam}

	// Endpoint values without a port, parsed once and copied per port.
	tmpl := make([]model.Endpoint, 0, len(es.Endpoints))
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		if len(ep.Addresses) == 0 {
			probs = append(probs, problem{fmt.Sprintf("endpoints[%d].addresses", i), "", reasonNoEndpointAddress})
			continue
		}
		// Only the first address is used: the API requires exactly one
		// for IP slices and kube-proxy reads Addresses[0].
		a, ok := parseIP(ep.Addresses[0])
		if !ok {
			probs = append(probs, problem{fmt.Sprintf("endpoints[%d].addresses[0]", i), ep.Addresses[0], reasonInvalidEndpointAddress})
			continue
		}
		if !fam.Contains(a) {
			probs = append(probs, problem{fmt.Sprintf("endpoints[%d].addresses[0]", i), ep.Addresses[0], reasonEndpointFamilyMismatch})
			continue
		}
		m := model.Endpoint{
			IP:          a,
			Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
			Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
			Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		}
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			m.PodName = ep.TargetRef.Name
		}
		if ep.NodeName != nil {
			m.NodeName = *ep.NodeName
			m.IsLocal = nodeName != "" && m.NodeName == nodeName
		}
		if ep.Zone != nil {
			m.Zone = *ep.Zone
		}
		if ep.Hints != nil {
			if len(ep.Hints.ForZones) > 0 {
				m.ZoneHints = make([]string, len(ep.Hints.ForZones))
				for j, z := range ep.Hints.ForZones {
					m.ZoneHints[j] = z.Name
				}
			}
			if len(ep.Hints.ForNodes) > 0 {
				m.NodeHints = make([]string, len(ep.Hints.ForNodes))
				for j, n := range ep.Hints.ForNodes {
					m.NodeHints[j] = n.Name
				}
			}
		}
		tmpl = append(tmpl, m)
	}

	type nameKey struct {
		name  string
		proto model.Protocol
	}
	seen := make(map[nameKey]struct{}, len(es.Ports))
	for i := range es.Ports {
		p := &es.Ports[i]
		field := fmt.Sprintf("ports[%d]", i)
		if p.Name == nil {
			probs = append(probs, problem{field + ".name", "", reasonMissingPortName})
			continue
		}
		// A nil port means "all ports" in the API; kube-proxy does not
		// implement that and skips it, so do we.
		if p.Port == nil || *p.Port < 1 || *p.Port > 65535 {
			v := ""
			if p.Port != nil {
				v = strconv.Itoa(int(*p.Port))
			}
			probs = append(probs, problem{field + ".port", v, reasonInvalidPort})
			continue
		}
		proto := model.TCP // API default
		if p.Protocol != nil {
			var ok bool
			if proto, ok = validProtocol(string(*p.Protocol)); !ok {
				probs = append(probs, problem{field + ".protocol", string(*p.Protocol), reasonUnknownProtocol})
				continue
			}
		}
		if _, dup := seen[nameKey{*p.Name, proto}]; dup {
			probs = append(probs, problem{field + ".name", *p.Name, reasonDuplicatePort})
			continue
		}
		seen[nameKey{*p.Name, proto}] = struct{}{}
		if len(tmpl) == 0 {
			continue
		}
		// One block of values and one of pointers per port keeps a
		// slice's endpoints to two allocations per port.
		block := make([]model.Endpoint, len(tmpl))
		copy(block, tmpl)
		eps := make([]*model.Endpoint, len(block))
		for j := range block {
			block[j].Port = uint16(*p.Port)
			eps[j] = &block[j]
		}
		e.ports = append(e.ports, slicePort{name: *p.Name, proto: proto, eps: sortDedupe(eps)})
	}
	return e, probs
}

// cmpEndpoint orders endpoints by (IP, Port).
func cmpEndpoint(a, b *model.Endpoint) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// sortDedupe sorts eps by (IP, Port), keeping the input order among equal
// keys, and keeps one endpoint per IP:port with kube-proxy's rule applied in
// input order: a later duplicate replaces an earlier one unless it is
// terminating. (The same IP can show up twice while an endpoint moves between
// slices, or when a terminating pod's IP is reused; the running pod wins.)
// eps is reused for the result.
func sortDedupe(eps []*model.Endpoint) []*model.Endpoint {
	slices.SortStableFunc(eps, cmpEndpoint)
	out := eps[:0]
	for _, e := range eps {
		if n := len(out); n > 0 && out[n-1].IP == e.IP && out[n-1].Port == e.Port {
			if !e.Terminating {
				out[n-1] = e
			}
			continue
		}
		out = append(out, e)
	}
	// Drop references past the end so dropped duplicates can be freed.
	clear(eps[len(out):])
	return out[:len(out):len(out)]
}

// endpointEqual compares two endpoints field by field. TestEndpointEqualCoversAllFields
// fails when model.Endpoint gains a field this function does not know.
func endpointEqual(a, b *model.Endpoint) bool {
	if a == b {
		return true
	}
	return a.IP == b.IP && a.Port == b.Port &&
		a.Ready == b.Ready && a.Serving == b.Serving && a.Terminating == b.Terminating &&
		a.NodeName == b.NodeName && a.Zone == b.Zone && a.IsLocal == b.IsLocal && a.PodName == b.PodName &&
		slices.Equal(a.ZoneHints, b.ZoneHints) && slices.Equal(a.NodeHints, b.NodeHints)
}

func endpointsEqual(a, b []*model.Endpoint) bool {
	return slices.EqualFunc(a, b, endpointEqual)
}

// sameSlice reports whether two converted slices are equal in everything the
// proxy uses (the no-op update test).
func sameSlice(a, b *sliceEntry) bool {
	if a.service != b.service || a.family != b.family || len(a.ports) != len(b.ports) {
		return false
	}
	for i := range a.ports {
		pa, pb := &a.ports[i], &b.ports[i]
		if pa.name != pb.name || pa.proto != pb.proto || !endpointsEqual(pa.eps, pb.eps) {
			return false
		}
	}
	return true
}
