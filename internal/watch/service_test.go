package watch

import (
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/internal/model"
)

func TestConvertService(t *testing.T) {
	local := v1.ServiceInternalTrafficPolicyLocal
	vip, proxy := v1.LoadBalancerIPModeVIP, v1.LoadBalancerIPModeProxy
	base := func(name string) model.ServicePort {
		return model.ServicePort{
			Name:      spn("ns", "s", name),
			ClusterIP: addr("198.19.192.10"),
			Port:      80,
			Protocol:  model.TCP,
		}
	}
	tests := []struct {
		name  string
		svc   *v1.Service
		fams  []model.Family
		want  map[model.Family][]model.ServicePort
		probs []string // reasons
	}{
		{
			name: "cluster IP",
			svc:  svc("ns", "s", "198.19.192.10"),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "external name is skipped",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
			}),
		},
		{name: "headless is skipped", svc: svc("ns", "s", "None")},
		{name: "no cluster IP is skipped", svc: svc("ns", "s", "")},
		{
			name: "other family only is skipped quietly",
			svc:  svc("ns", "s", "2001:db8:20::a"),
		},
		{
			name: "legacy service without ipFamilies",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.IPFamilies, s.Spec.ClusterIPs = nil, nil
			}),
			fams: dual,
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "dual stack split per family",
			svc:  svc("ns", "s", "198.19.192.10", dualStack("2001:db8:20::a")),
			fams: dual,
			want: map[model.Family][]model.ServicePort{
				model.IPv4: {base("http")},
				model.IPv6: {func() model.ServicePort { p := base("http"); p.ClusterIP = addr("2001:db8:20::a"); return p }()},
			},
		},
		{
			name: "dual stack service on an IPv4 proxy",
			svc:  svc("ns", "s", "198.19.192.10", dualStack("2001:db8:20::a")),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "protocols, default TCP, one port per entry, node port",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports = []v1.ServicePort{
					{Name: "a", Port: 53, NodePort: 30053},
					{Name: "b", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 30054},
					{Name: "c", Protocol: v1.ProtocolSCTP, Port: 9},
				}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {
				{Name: spn("ns", "s", "a"), ClusterIP: addr("198.19.192.10"), Port: 53, Protocol: model.TCP, NodePort: 30053},
				{Name: model.ServicePortName{Namespace: "ns", Name: "s", Port: "b", Protocol: model.UDP}, ClusterIP: addr("198.19.192.10"), Port: 53, Protocol: model.UDP, NodePort: 30054},
				{Name: model.ServicePortName{Namespace: "ns", Name: "s", Port: "c", Protocol: model.SCTP}, ClusterIP: addr("198.19.192.10"), Port: 9, Protocol: model.SCTP},
			}},
		},
		{
			name: "external IPs filtered per family, blank ignored, bad reported",
			svc: svc("ns", "s", "198.19.192.10", dualStack("2001:db8:20::a"), func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.1", "2001:db8:30::1", " ", "203.0.113.300", "203.0.113.2"}
			}),
			fams: dual,
			want: map[model.Family][]model.ServicePort{
				model.IPv4: {func() model.ServicePort {
					p := base("http")
					p.ExternalIPs = []netip.Addr{addr("203.0.113.1"), addr("203.0.113.2")}
					return p
				}()},
				model.IPv6: {func() model.ServicePort {
					p := base("http")
					p.ClusterIP = addr("2001:db8:20::a")
					p.ExternalIPs = []netip.Addr{addr("2001:db8:30::1")}
					return p
				}()},
			},
			probs: []string{reasonInvalidExternalIP},
		},
		{
			name: "load balancer ingress: VIP mode kept, proxy mode and hostnames not, family filtered",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "203.0.113.10"},
					{IP: "203.0.113.11", IPMode: &vip},
					{IP: "203.0.113.12", IPMode: &proxy},
					{Hostname: "lb.example"},
					{IP: "2001:db8:30::10"},
					{IP: "not-an-ip"},
				}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.NodePort = 30080
				p.LoadBalancerVIPs = []netip.Addr{addr("203.0.113.10"), addr("203.0.113.11")}
				return p
			}()}},
			probs: []string{reasonInvalidLoadBalancerIP},
		},
		{
			name: "source ranges trimmed, masked, per family; bad reported",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{" 198.51.100.7/24 ", "2001:db8:1::/64", "198.51.100.300/32", "192.0.2.0/25"}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.LoadBalancerSourceRanges = []netip.Prefix{prefix("198.51.100.0/24"), prefix("192.0.2.0/25")}
				return p
			}()}},
			probs: []string{reasonInvalidSourceRange},
		},
		{
			name: "zero-length source range means allow all, in its family only",
			svc: svc("ns", "s", "198.19.192.10", dualStack("2001:db8:20::a"), func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "0.0.0.0/0", "2001:db8:1::/64"}
			}),
			fams: dual,
			want: map[model.Family][]model.ServicePort{
				model.IPv4: {base("http")},
				model.IPv6: {func() model.ServicePort {
					p := base("http")
					p.ClusterIP = addr("2001:db8:20::a")
					p.LoadBalancerSourceRanges = []netip.Prefix{prefix("2001:db8:1::/64")}
					return p
				}()},
			},
		},
		{
			name: "source range annotation is not read (kube-proxy does not)",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Annotations = map[string]string{v1.AnnotationLoadBalancerSourceRangesKey: "198.51.100.0/24"}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "external policy Local on a NodePort service, with health check only for LoadBalancer",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 31000 // not a LoadBalancer: ignored
				s.Spec.Ports[0].NodePort = 30080
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.NodePort = 30080
				p.ExternalPolicyLocal = true
				return p
			}()}},
		},
		{
			name: "external policy Local ignored on a cluster-only service",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "external policy Local on a ClusterIP service with external IPs",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.ExternalIPs = []string{"203.0.113.1"}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.ExternalIPs = []netip.Addr{addr("203.0.113.1")}
				p.ExternalPolicyLocal = true
				return p
			}()}},
		},
		{
			name: "load balancer with Local policy and health check node port",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 31000
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.ExternalPolicyLocal = true
				p.HealthCheckNodePort = 31000
				return p
			}()}},
		},
		{
			name: "load balancer with Local policy but no health check node port",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.ExternalPolicyLocal = true
				return p
			}()}},
			probs: []string{reasonMissingHealthCheckPort},
		},
		{
			name: "load balancer with out-of-range health check node port",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 70000
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.ExternalPolicyLocal = true
				return p
			}()}},
			probs: []string{reasonInvalidHealthCheckPort},
		},
		{
			name: "internal policy Local, traffic distribution, topology mode",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = &local
				s.Spec.TrafficDistribution = ptr.To(model.TrafficDistributionPreferClose)
				s.Annotations = map[string]string{v1.AnnotationTopologyMode: "Auto"}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.InternalPolicyLocal = true
				p.TrafficDistribution = model.TrafficDistributionPreferClose
				p.TopologyAwareHints = true
				return p
			}()}},
		},
		{
			name: "older topology-aware-hints annotation, lower case",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Annotations = map[string]string{v1.DeprecatedAnnotationTopologyAwareHints: "auto"}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.TopologyAwareHints = true
				return p
			}()}},
		},
		{
			name: "topology-mode wins over the older annotation",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Annotations = map[string]string{
					v1.AnnotationTopologyMode:                 "Disabled",
					v1.DeprecatedAnnotationTopologyAwareHints: "Auto",
				}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
		{
			name: "client IP affinity with timeout",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.AffinityTimeoutSeconds = 60
				return p
			}()}},
		},
		{
			name: "client IP affinity without config defaults to 10800",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.AffinityTimeoutSeconds = 10800
				return p
			}()}},
		},
		{
			name: "client IP affinity with an out-of-range timeout",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](0)}}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {func() model.ServicePort {
				p := base("http")
				p.AffinityTimeoutSeconds = 10800
				return p
			}()}},
			probs: []string{reasonInvalidAffinityTimeout},
		},
		{
			name: "malformed cluster IP skips the service",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "198.19.192.999", []string{"198.19.192.999"}
			}),
			probs: []string{reasonInvalidClusterIP},
		},
		{
			name: "cluster IP of the wrong family skips that family only",
			svc: svc("ns", "s", "198.19.192.10", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"198.19.192.10", "198.19.192.11"}
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
			}),
			fams:  dual,
			want:  map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
			probs: []string{reasonClusterIPFamilyMismatch},
		},
		{
			name: "bad ports are skipped, good ones kept",
			svc: svc("ns", "s", "198.19.192.10", withPorts(
				v1.ServicePort{Name: "zero", Protocol: v1.ProtocolTCP, Port: 0},
				v1.ServicePort{Name: "big", Protocol: v1.ProtocolTCP, Port: 70000},
				v1.ServicePort{Name: "icmp", Protocol: "ICMP", Port: 7},
				v1.ServicePort{Name: "np", Protocol: v1.ProtocolTCP, Port: 8080, NodePort: 99999},
				v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
				v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 81}, // duplicate name
				v1.ServicePort{Name: "alt", Protocol: v1.ProtocolTCP, Port: 80},  // duplicate port
				v1.ServicePort{Name: "http", Protocol: v1.ProtocolUDP, Port: 80}, // same name, other protocol: fine
			)),
			want: map[model.Family][]model.ServicePort{model.IPv4: {
				base("http"),
				{Name: model.ServicePortName{Namespace: "ns", Name: "s", Port: "http", Protocol: model.UDP}, ClusterIP: addr("198.19.192.10"), Port: 80, Protocol: model.UDP},
			}},
			probs: []string{reasonInvalidPort, reasonInvalidPort, reasonUnknownProtocol, reasonInvalidNodePort, reasonDuplicatePort, reasonDuplicatePort},
		},
		{
			name: "leading zeros in IPv4 are read as decimal, as kube-proxy does",
			svc: svc("ns", "s", "198.19.192.010", func(s *v1.Service) {
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
			}),
			want: map[model.Family][]model.ServicePort{model.IPv4: {base("http")}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fams := tc.fams
			if fams == nil {
				fams = v4
			}
			got, probs := convertService(tc.svc, fams)
			for _, f := range []model.Family{model.IPv4, model.IPv6} {
				var gotVals []model.ServicePort
				for _, p := range got[famIdx(f)] {
					gotVals = append(gotVals, *p)
				}
				if !reflect.DeepEqual(gotVals, tc.want[f]) {
					t.Errorf("%v ports:\n got %+v\nwant %+v", f, gotVals, tc.want[f])
				}
			}
			var reasons []string
			for _, p := range probs {
				reasons = append(reasons, p.Reason)
				if p.Field == "" {
					t.Errorf("problem without field: %+v", p)
				}
			}
			if !reflect.DeepEqual(reasons, tc.probs) {
				t.Errorf("problems: got %v (%+v), want %v", reasons, probs, tc.probs)
			}
		})
	}
}

// TestServicePortEqualCoversAllFields: servicePortEqual must see a change in
// every field of model.ServicePort; otherwise a changed Service could keep its
// old pointer and never be reprogrammed.
func TestServicePortEqualCoversAllFields(t *testing.T) {
	a := model.ServicePort{}
	typ := reflect.TypeOf(a)
	for i := 0; i < typ.NumField(); i++ {
		b := a
		v := reflect.ValueOf(&b).Elem().Field(i)
		setNonZero(t, typ.Field(i).Name, v)
		if servicePortEqual(&a, &b) {
			t.Errorf("servicePortEqual ignores field %s", typ.Field(i).Name)
		}
	}
}

// TestEndpointEqualCoversAllFields is the same guard for model.Endpoint.
func TestEndpointEqualCoversAllFields(t *testing.T) {
	a := model.Endpoint{}
	typ := reflect.TypeOf(a)
	for i := 0; i < typ.NumField(); i++ {
		b := a
		setNonZero(t, typ.Field(i).Name, reflect.ValueOf(&b).Elem().Field(i))
		if endpointEqual(&a, &b) {
			t.Errorf("endpointEqual ignores field %s", typ.Field(i).Name)
		}
	}
}

func setNonZero(t *testing.T, name string, v reflect.Value) {
	t.Helper()
	switch v.Interface().(type) {
	case netip.Addr:
		v.Set(reflect.ValueOf(addr("192.0.2.1")))
	case []netip.Addr:
		v.Set(reflect.ValueOf([]netip.Addr{addr("192.0.2.1")}))
	case []netip.Prefix:
		v.Set(reflect.ValueOf([]netip.Prefix{prefix("192.0.2.0/24")}))
	case model.ServicePortName:
		v.Set(reflect.ValueOf(spn("a", "b", "c")))
	case []string:
		v.Set(reflect.ValueOf([]string{"x"}))
	default:
		switch v.Kind() {
		case reflect.Bool:
			v.SetBool(true)
		case reflect.String:
			v.SetString("x")
		case reflect.Uint8, reflect.Uint16, reflect.Uint32:
			v.SetUint(1)
		case reflect.Int32, reflect.Int:
			v.SetInt(1)
		default:
			t.Fatalf("field %s: kind %v not handled by the test; extend setNonZero", name, v.Kind())
		}
	}
}
