package watch

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kpr-proxy/kpr/internal/model"
)

// defaultAffinityTimeout is the API default for
// sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const defaultAffinityTimeout = 10800

// maxAffinityTimeout is the API's upper bound (1 day).
const maxAffinityTimeout = 86400

// svcPorts holds one Service's converted ports per family slot (famIdx), in
// spec.ports order. A zero value means the Service is not proxied.
type svcPorts [2][]*model.ServicePort

func (p svcPorts) empty() bool { return len(p[0]) == 0 && len(p[1]) == 0 }

// same reports pointer identity of every port: the tracker reuses unchanged
// *ServicePort values, so this is the "nothing changed" test.
func (p svcPorts) same(o svcPorts) bool {
	for i := range p {
		if len(p[i]) != len(o[i]) {
			return false
		}
		for j := range p[i] {
			if p[i][j] != o[i][j] {
				return false
			}
		}
	}
	return true
}

// convertService turns a Service into its validated per-family ports, as
// kube-proxy's serviceToServiceMap/newBaseServiceInfo do. Bad parts are
// skipped and returned as problems; the rest is still converted.
// Only the families in fams are filled in.
func convertService(svc *v1.Service, fams []model.Family) (svcPorts, []problem) {
	var out svcPorts
	var probs []problem
	// kube-proxy's ShouldSkipService: ExternalName Services are DNS only,
	// and "None"/"" primary cluster IPs are headless (served by DNS).
	if svc.Spec.Type == v1.ServiceTypeExternalName ||
		svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return out, nil
	}
	clusterIPs, probs := serviceClusterIPs(svc, fams, probs)
	if !clusterIPs[0].IsValid() && !clusterIPs[1].IsValid() {
		return out, probs
	}

	common := model.ServicePort{
		// ExternalPolicyLocal follows apiservice.ExternalPolicyLocal: only a
		// Service that is externally accessible by its type honours it.
		ExternalPolicyLocal: externallyAccessibleType(svc) &&
			svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
		InternalPolicyLocal: svc.Spec.InternalTrafficPolicy != nil &&
			*svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
		TopologyAwareHints: topologyAwareHints(svc.Annotations),
	}
	if svc.Spec.TrafficDistribution != nil {
		common.TrafficDistribution = *svc.Spec.TrafficDistribution
	}
	common.AffinityTimeoutSeconds, probs = affinityTimeout(svc, probs)
	common.HealthCheckNodePort, probs = healthCheckNodePort(svc, common.ExternalPolicyLocal, probs)

	var extIPs, lbIPs [2][]netip.Addr
	var ranges [2][]netip.Prefix
	probs = serviceExternalIPs(svc, &extIPs, probs)
	probs = serviceLoadBalancerIPs(svc, &lbIPs, probs)
	probs = serviceSourceRanges(svc, &ranges, probs)

	type nameKey struct {
		name  string
		proto model.Protocol
	}
	type portKey struct {
		port  int32
		proto model.Protocol
	}
	seenNames := make(map[nameKey]struct{}, len(svc.Spec.Ports))
	seenPorts := make(map[portKey]struct{}, len(svc.Spec.Ports))
	for _, f := range fams {
		if fi := famIdx(f); clusterIPs[fi].IsValid() {
			out[fi] = make([]*model.ServicePort, 0, len(svc.Spec.Ports))
		}
	}
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		field := fmt.Sprintf("spec.ports[%d]", i)
		proto, ok := validProtocol(string(sp.Protocol))
		if !ok {
			probs = append(probs, problem{field + ".protocol", string(sp.Protocol), reasonUnknownProtocol})
			continue
		}
		if sp.Port < 1 || sp.Port > 65535 {
			probs = append(probs, problem{field + ".port", strconv.Itoa(int(sp.Port)), reasonInvalidPort})
			continue
		}
		if sp.NodePort < 0 || sp.NodePort > 65535 {
			probs = append(probs, problem{field + ".nodePort", strconv.Itoa(int(sp.NodePort)), reasonInvalidNodePort})
			continue
		}
		// The API rejects both kinds of duplicate; if one gets through
		// anyway, the first entry wins and the later one is dropped, so
		// one VIP:port never maps to two rule sets.
		if _, dup := seenNames[nameKey{sp.Name, proto}]; dup {
			probs = append(probs, problem{field + ".name", sp.Name, reasonDuplicatePort})
			continue
		}
		if _, dup := seenPorts[portKey{sp.Port, proto}]; dup {
			probs = append(probs, problem{field + ".port", strconv.Itoa(int(sp.Port)), reasonDuplicatePort})
			continue
		}
		seenNames[nameKey{sp.Name, proto}] = struct{}{}
		seenPorts[portKey{sp.Port, proto}] = struct{}{}

		for fi := range clusterIPs {
			if out[fi] == nil {
				continue
			}
			p := common
			p.Name = model.ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name, Protocol: proto}
			p.ClusterIP = clusterIPs[fi]
			p.Port = uint16(sp.Port)
			p.Protocol = proto
			p.NodePort = uint16(sp.NodePort)
			p.ExternalIPs = extIPs[fi]
			p.LoadBalancerVIPs = lbIPs[fi]
			p.LoadBalancerSourceRanges = ranges[fi]
			out[fi] = append(out[fi], &p)
		}
	}
	for fi := range out {
		if len(out[fi]) == 0 {
			out[fi] = nil
		}
	}
	return out, probs
}

// serviceClusterIPs picks the cluster IP of each family the proxy runs, like
// proxyutil.GetClusterIPByFamily (including the skew case of a Service
// without spec.ipFamilies).
func serviceClusterIPs(svc *v1.Service, fams []model.Family, probs []problem) ([2]netip.Addr, []problem) {
	var ips [2]netip.Addr
	runs := func(f model.Family) bool {
		for _, r := range fams {
			if r == f {
				return true
			}
		}
		return false
	}
	if len(svc.Spec.IPFamilies) == 0 {
		a, ok := parseIP(svc.Spec.ClusterIP)
		if !ok {
			return ips, append(probs, problem{"spec.clusterIP", svc.Spec.ClusterIP, reasonInvalidClusterIP})
		}
		if f := model.FamilyOf(a); runs(f) {
			ips[famIdx(f)] = a
		}
		return ips, probs
	}
	for i, apiFam := range svc.Spec.IPFamilies {
		f, ok := familyOfAPI(string(apiFam))
		if !ok || !runs(f) || i >= len(svc.Spec.ClusterIPs) {
			continue
		}
		s := svc.Spec.ClusterIPs[i]
		if s == "" || s == v1.ClusterIPNone {
			continue
		}
		field := fmt.Sprintf("spec.clusterIPs[%d]", i)
		a, ok := parseIP(s)
		if !ok {
			probs = append(probs, problem{field, s, reasonInvalidClusterIP})
			continue
		}
		if !f.Contains(a) {
			probs = append(probs, problem{field, s, reasonClusterIPFamilyMismatch})
			continue
		}
		ips[famIdx(f)] = a
	}
	return ips, probs
}

// externallyAccessibleType mirrors apiservice.ExternallyAccessible. An empty
// type is the API default, ClusterIP.
func externallyAccessibleType(svc *v1.Service) bool {
	switch svc.Spec.Type {
	case v1.ServiceTypeLoadBalancer, v1.ServiceTypeNodePort:
		return true
	case v1.ServiceTypeClusterIP, "":
		return len(svc.Spec.ExternalIPs) > 0
	}
	return false
}

// topologyAwareHints reads service.kubernetes.io/topology-mode, falling back
// to the older topology-aware-hints annotation when the new one is absent, and
// accepts "Auto" in both spellings kube-proxy accepted.
func topologyAwareHints(ann map[string]string) bool {
	v, ok := ann[v1.AnnotationTopologyMode]
	if !ok || v == "" {
		v = ann[v1.DeprecatedAnnotationTopologyAwareHints]
	}
	return v == "Auto" || v == "auto"
}

func affinityTimeout(svc *v1.Service, probs []problem) (int32, []problem) {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0, probs
	}
	c := svc.Spec.SessionAffinityConfig
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
		// The apiserver always fills this in; a missing value is the default.
		return defaultAffinityTimeout, probs
	}
	t := *c.ClientIP.TimeoutSeconds
	if t <= 0 || t > maxAffinityTimeout {
		// Keep the port (affinity is a preference, not a security
		// boundary) with the default timeout.
		return defaultAffinityTimeout, append(probs, problem{
			"spec.sessionAffinityConfig.clientIP.timeoutSeconds", strconv.Itoa(int(t)), reasonInvalidAffinityTimeout})
	}
	return t, probs
}

// healthCheckNodePort follows apiservice.NeedsHealthCheck: LoadBalancer
// Services with externalTrafficPolicy Local.
func healthCheckNodePort(svc *v1.Service, externalLocal bool, probs []problem) (uint16, []problem) {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer || !externalLocal {
		return 0, probs
	}
	p := svc.Spec.HealthCheckNodePort
	switch {
	case p == 0:
		return 0, append(probs, problem{"spec.healthCheckNodePort", "0", reasonMissingHealthCheckPort})
	case p < 0 || p > 65535:
		return 0, append(probs, problem{"spec.healthCheckNodePort", strconv.Itoa(int(p)), reasonInvalidHealthCheckPort})
	}
	return uint16(p), probs
}

func serviceExternalIPs(svc *v1.Service, out *[2][]netip.Addr, probs []problem) []problem {
	for i, s := range svc.Spec.ExternalIPs {
		a, ok := parseIP(s)
		if !ok {
			// Like proxyutil.MapIPsByIPFamily: blank entries are ignored
			// quietly, anything else is reported.
			if strings.TrimSpace(s) != "" {
				probs = append(probs, problem{fmt.Sprintf("spec.externalIPs[%d]", i), s, reasonInvalidExternalIP})
			}
			continue
		}
		fi := famIdx(model.FamilyOf(a))
		out[fi] = append(out[fi], a)
	}
	return probs
}

// serviceLoadBalancerIPs keeps the VIP-mode ingress IPs. Entries with
// ipMode Proxy (or any non-VIP mode) are left to the load balancer, and
// hostname-only entries have nothing to program.
func serviceLoadBalancerIPs(svc *v1.Service, out *[2][]netip.Addr, probs []problem) []problem {
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
			continue
		}
		a, ok := parseIP(ing.IP)
		if !ok {
			probs = append(probs, problem{fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP, reasonInvalidLoadBalancerIP})
			continue
		}
		fi := famIdx(model.FamilyOf(a))
		out[fi] = append(out[fi], a)
	}
	return probs
}

// serviceSourceRanges reads spec.loadBalancerSourceRanges like
// newBaseServiceInfo: spaces trimmed, invalid entries skipped, and a
// zero-length prefix in a family means "allow all" (an empty list).
//
// kube-proxy v1.37 does not read the
// service.beta.kubernetes.io/load-balancer-source-ranges annotation (only
// cloud providers do), so neither do we.
func serviceSourceRanges(svc *v1.Service, out *[2][]netip.Prefix, probs []problem) []problem {
	var allowAll [2]bool
	for i, s := range svc.Spec.LoadBalancerSourceRanges {
		p, ok := parseCIDR(s)
		if !ok {
			if strings.TrimSpace(s) != "" {
				probs = append(probs, problem{fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, reasonInvalidSourceRange})
			}
			continue
		}
		fi := famIdx(model.FamilyOf(p.Addr()))
		if p.Bits() == 0 {
			allowAll[fi] = true
		}
		out[fi] = append(out[fi], p)
	}
	for fi := range out {
		if allowAll[fi] {
			out[fi] = nil
		}
	}
	return probs
}
