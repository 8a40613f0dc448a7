package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	"github.com/kpr-proxy/kpr/internal/model"
)

// HealthChecker reports whether the proxy as a whole is healthy
// (*ProxyHealthServer implements it).
type HealthChecker interface {
	Healthy() bool
}

// ServiceHealthConfig configures a ServiceHealthServer.
type ServiceHealthConfig struct {
	// NodeName appears in logs and events.
	NodeName string
	// Family picks the socket family (tcp4/tcp6). The zero value lets the
	// system choose ("tcp" on the IPv4 wildcard, as kube-proxy does for an
	// unknown family).
	Family model.Family
	// NodePortAddresses are the node IPs to listen on, already resolved from
	// --nodeport-addresses; empty means all addresses (the wildcard). Every
	// address must belong to Family.
	NodePortAddresses []netip.Addr
	// Proxy is asked on every request whether the proxy is healthy.
	Proxy HealthChecker
	// Recorder, when set, gets a Warning event on the Service when its
	// health check port cannot be opened, as kube-proxy emits.
	Recorder events.EventRecorder
	// Listener defaults to StdListener.
	Listener Listener
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
}

// ServiceHealthServer runs the health-check node port listeners of
// LoadBalancer Services with externalTrafficPolicy: Local. A load balancer
// probes them to learn which nodes have local endpoints.
type ServiceHealthServer struct {
	nodeName string
	network  string
	ips      []netip.Addr
	proxy    HealthChecker
	recorder events.EventRecorder
	listener Listener
	log      *zap.Logger

	mu       sync.RWMutex
	services map[types.NamespacedName]*hcInstance
}

type hcInstance struct {
	port      uint16
	servers   []*http.Server
	listeners []net.Listener
	endpoints int // local ready endpoints
}

// NewServiceHealthServer validates cfg and returns a server with no
// listeners.
func NewServiceHealthServer(cfg ServiceHealthConfig) (*ServiceHealthServer, error) {
	if cfg.Proxy == nil {
		return nil, fmt.Errorf("service health server: Proxy is required")
	}
	s := &ServiceHealthServer{
		nodeName: cfg.NodeName,
		proxy:    cfg.Proxy,
		recorder: cfg.Recorder,
		listener: cfg.Listener,
		log:      cfg.Logger,
		services: map[types.NamespacedName]*hcInstance{},
	}
	switch cfg.Family {
	case model.IPv4:
		s.network, s.ips = "tcp4", []netip.Addr{netip.IPv4Unspecified()}
	case model.IPv6:
		s.network, s.ips = "tcp6", []netip.Addr{netip.IPv6Unspecified()}
	case 0:
		s.network, s.ips = "tcp", []netip.Addr{netip.IPv4Unspecified()}
	default:
		return nil, fmt.Errorf("service health server: unknown IP family %v", cfg.Family)
	}
	if len(cfg.NodePortAddresses) > 0 {
		s.ips = nil
		for _, a := range cfg.NodePortAddresses {
			if !a.IsValid() {
				return nil, fmt.Errorf("service health server: invalid node port address")
			}
			if cfg.Family != 0 && !cfg.Family.Contains(a) {
				return nil, fmt.Errorf("service health server: node port address %s is not %v", a, cfg.Family)
			}
			s.ips = append(s.ips, a)
		}
	}
	if s.listener == nil {
		s.listener = StdListener{}
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.log = s.log.With(zap.String("node", cfg.NodeName))
	return s, nil
}

// SyncServices makes the set of listeners match services (Service → health
// check node port). Listeners of Services no longer present, or whose port
// changed, are closed; new ones are opened. A port that cannot be opened is
// logged (and reported as an event) and tried again on the next call; the
// other Services are not affected.
func (s *ServiceHealthServer) SyncServices(services map[types.NamespacedName]uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()

	for nsn, inst := range s.services {
		if port, ok := services[nsn]; !ok || port != inst.port {
			s.log.Info("closing service health check", zap.String("service", nsn.String()), zap.Uint16("port", inst.port))
			inst.close()
			delete(s.services, nsn)
		}
	}

	// Open in a stable order so logs and port conflicts are reproducible.
	names := make([]types.NamespacedName, 0, len(services))
	for nsn := range services {
		if s.services[nsn] == nil {
			names = append(names, nsn)
		}
	}
	sort.Slice(names, func(i, j int) bool { return names[i].String() < names[j].String() })
	for _, nsn := range names {
		port := services[nsn]
		if port == 0 {
			s.log.Error("service health check port is 0, skipping", zap.String("service", nsn.String()))
			continue
		}
		inst, err := s.open(nsn, port)
		if err != nil {
			s.log.Error("failed to open service health check, will retry on next sync",
				zap.String("service", nsn.String()), zap.Uint16("port", port), zap.Error(err))
			if s.recorder != nil {
				s.recorder.Eventf(&v1.ObjectReference{
					APIVersion: "v1",
					Kind:       "Service",
					Namespace:  nsn.Namespace,
					Name:       nsn.Name,
				}, nil, v1.EventTypeWarning, "FailedToStartServiceHealthcheck", "Listen",
					"node %s failed to start healthcheck %q on port %d: %v", s.nodeName, nsn.String(), port, err)
			}
			continue
		}
		s.log.Info("opened service health check", zap.String("service", nsn.String()), zap.Uint16("port", port))
		s.services[nsn] = inst
	}
}

// open listens on every configured address; on any failure it closes what
// it opened, so a later retry (or another owner of the port) starts clean.
func (s *ServiceHealthServer) open(nsn types.NamespacedName, port uint16) (*hcInstance, error) {
	inst := &hcInstance{port: port}
	for _, ip := range s.ips {
		addr := netip.AddrPortFrom(ip, port).String()
		l, err := s.listener.Listen(context.Background(), s.network, addr)
		if err != nil {
			inst.close()
			return nil, err
		}
		srv := newHTTPServer(hcHandler{nsn: nsn, s: s})
		inst.servers = append(inst.servers, srv)
		inst.listeners = append(inst.listeners, l)
		go func() {
			// Serve returns http.ErrServerClosed after close().
			if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
				s.log.Error("service health check stopped", zap.String("service", nsn.String()),
					zap.String("address", addr), zap.Error(err))
			}
		}()
	}
	return inst, nil
}

// close stops the servers and closes their sockets before returning: the
// serving goroutine may not have reached Serve yet, and then srv.Close alone
// would leave the socket open until it does, so an immediate re-open of the
// same port (a Service moving ports, another Service taking it over) would
// fail with EADDRINUSE.
func (inst *hcInstance) close() {
	for _, srv := range inst.servers {
		_ = srv.Close()
	}
	for _, l := range inst.listeners {
		_ = l.Close()
	}
	inst.servers, inst.listeners = nil, nil
}

// SyncEndpoints sets the number of local ready endpoints per Service.
// Services missing from the map have 0; entries for Services without a
// listener are ignored.
func (s *ServiceHealthServer) SyncEndpoints(endpoints map[types.NamespacedName]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for nsn, inst := range s.services {
		inst.endpoints = max(endpoints[nsn], 0)
	}
}

// Ports returns the Services that have open listeners and their ports.
func (s *ServiceHealthServer) Ports() map[types.NamespacedName]uint16 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[types.NamespacedName]uint16, len(s.services))
	for nsn, inst := range s.services {
		out[nsn] = inst.port
	}
	return out
}

// Close closes every listener (at shutdown).
func (s *ServiceHealthServer) Close() {
	s.SyncServices(nil)
}

type hcHandler struct {
	nsn types.NamespacedName
	s   *ServiceHealthServer
}

// ServeHTTP answers like kube-proxy: 200 when the Service has local
// endpoints and the proxy is healthy, else 503, with the same JSON body
// (kube-proxy's exact text, tabs included) and headers.
func (h hcHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.RLock()
	inst, ok := h.s.services[h.nsn]
	count := 0
	if ok {
		count = inst.endpoints
	}
	h.s.mu.RUnlock()
	healthy := h.s.proxy.Healthy()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	// A request racing with the listener's close gets 503 (kube-proxy sends
	// an empty 200 there, which a load balancer would read as healthy).
	if ok && count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = fmt.Fprint(w, ServiceHealthBody(h.nsn, count, healthy))
}

// ServiceHealthBody is the JSON body of a Service health check answer,
// byte for byte what kube-proxy sends.
func ServiceHealthBody(nsn types.NamespacedName, localEndpoints int, proxyHealthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		nsn.Namespace, nsn.Name, localEndpoints, proxyHealthy)
}
