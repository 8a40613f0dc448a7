package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is
// about to delete; /healthz then fails so load balancers drain the node.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// DefaultHealthzBindAddress is kube-proxy's --healthz-bind-address default.
const DefaultHealthzBindAddress = "0.0.0.0:10256"

// ProxierHealth is the health of the proxier for one IP family. Field names
// and JSON tags are kube-proxy's.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the body of /healthz and /livez, field for field
// kube-proxy's.
type ProxyHealth struct {
	// LastUpdated is the latest Updated time over all families; when the
	// proxy is healthy the handlers replace it with the current time (as
	// kube-proxy does, for compatibility with old clients).
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	// Healthy is true when every family's proxier is healthy.
	Healthy bool                          `json:"healthy"`
	Status  map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// NodeGetter returns the proxy's own Node object, nil if unknown.
type NodeGetter interface {
	Node() *v1.Node
}

// NodeEligible reports whether a node should receive load-balancer traffic:
// it exists, is not being deleted and is not tainted for deletion by the
// Cluster Autoscaler.
func NodeEligible(node *v1.Node) bool {
	if node == nil {
		return false
	}
	if !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// ProxyHealthConfig configures a ProxyHealthServer.
type ProxyHealthConfig struct {
	// Addr is host:port to listen on; default DefaultHealthzBindAddress.
	Addr string
	// HealthTimeout: a proxier is unhealthy when a queued update has waited
	// longer than this without a successful sync. kube-proxy uses twice the
	// sync period (--iptables-sync-period / --ipvs-sync-period).
	HealthTimeout time.Duration
	// Node supplies the Node for the eligibility check of /healthz. When
	// nil, the node is always considered eligible.
	Node NodeGetter
	// Metrics counts answers by status code (kubeproxy_proxy_healthz_total,
	// kubeproxy_proxy_livez_total); may be nil.
	Metrics *metrics.Metrics
	// Listener defaults to StdListener.
	Listener Listener
	// Clock defaults to the real clock.
	Clock clock.Clock
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
}

// ProxyHealthServer tracks whether the proxiers keep their rules up to date
// and serves /healthz and /livez like kube-proxy.
type ProxyHealthServer struct {
	addr     string
	timeout  time.Duration
	node     NodeGetter
	metrics  *metrics.Metrics
	listener Listener
	clock    clock.Clock
	log      *zap.Logger

	mu          sync.RWMutex
	lastUpdated map[model.Family]time.Time
	// oldestQueued is the time of the oldest update queued since the last
	// successful sync, per family.
	oldestQueued map[model.Family]time.Time
}

// NewProxyHealthServer validates cfg and returns a server. Nothing listens
// until Run or Serve is called.
func NewProxyHealthServer(cfg ProxyHealthConfig) (*ProxyHealthServer, error) {
	if cfg.HealthTimeout <= 0 {
		return nil, fmt.Errorf("proxy health server: HealthTimeout %v must be positive", cfg.HealthTimeout)
	}
	addr := cfg.Addr
	if addr == "" {
		addr = DefaultHealthzBindAddress
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("proxy health server: bad address %q: %w", addr, err)
	}
	s := &ProxyHealthServer{
		addr:         addr,
		timeout:      cfg.HealthTimeout,
		node:         cfg.Node,
		metrics:      cfg.Metrics,
		listener:     cfg.Listener,
		clock:        cfg.Clock,
		log:          cfg.Logger,
		lastUpdated:  map[model.Family]time.Time{},
		oldestQueued: map[model.Family]time.Time{},
	}
	if s.listener == nil {
		s.listener = StdListener{}
	}
	if s.clock == nil {
		s.clock = clock.RealClock{}
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	return s, nil
}

// QueuedUpdate records that the proxier for family has received a change it
// has not programmed yet. Only the oldest pending change counts.
func (s *ProxyHealthServer) QueuedUpdate(f model.Family) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.oldestQueued[f]; !ok {
		s.oldestQueued[f] = s.clock.Now()
	}
}

// Updated records that the proxier for family has programmed everything it
// was asked to.
func (s *ProxyHealthServer) Updated(f model.Family) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.oldestQueued, f)
	s.lastUpdated[f] = s.clock.Now()
}

// Health returns the proxy's health. A family is unhealthy when it has
// synced at least once and an update has been queued for HealthTimeout or
// longer. A family that never synced counts as healthy (it is starting up),
// exactly as in kube-proxy.
func (s *ProxyHealthServer) Health() ProxyHealth {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := ProxyHealth{
		Healthy:     true,
		CurrentTime: s.clock.Now(),
		Status:      map[v1.IPFamily]ProxierHealth{},
	}
	for f, last := range s.lastUpdated {
		if last.After(h.LastUpdated) {
			h.LastUpdated = last
		}
		healthy := true
		if queued, ok := s.oldestQueued[f]; ok && h.CurrentTime.Sub(queued) >= s.timeout {
			healthy = false
			h.Healthy = false
		}
		h.Status[v1.IPFamily(f.String())] = ProxierHealth{LastUpdated: last, Healthy: healthy}
	}
	return h
}

// Healthy is Health().Healthy.
func (s *ProxyHealthServer) Healthy() bool { return s.Health().Healthy }

// NodeEligible reports whether this node should receive load-balancer
// traffic (see the package-level NodeEligible).
func (s *ProxyHealthServer) NodeEligible() bool {
	if s.node == nil {
		return true
	}
	return NodeEligible(s.node.Node())
}

// Handler serves /healthz and /livez.
func (s *ProxyHealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.serveHealthz)
	mux.HandleFunc("/livez", s.serveLivez)
	return mux
}

// /healthz: proxier health and node eligibility (load balancers use it to
// drain nodes).
func (s *ProxyHealthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	h := s.Health()
	eligible := s.NodeEligible()
	h.NodeEligible = &eligible
	code := s.writeHealth(w, h, h.Healthy && eligible)
	s.metrics.HealthzServed(code)
}

// /livez: proxier health only; a node being drained is still alive.
func (s *ProxyHealthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	h := s.Health()
	code := s.writeHealth(w, h, h.Healthy)
	s.metrics.LivezServed(code)
}

func (s *ProxyHealthServer) writeHealth(w http.ResponseWriter, h ProxyHealth, ok bool) int {
	code := http.StatusServiceUnavailable
	if ok {
		code = http.StatusOK
		// kube-proxy reports "now" as lastUpdated while healthy: old clients
		// read it as "the sync loop is alive".
		h.LastUpdated = s.clock.Now()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	body, err := json.Marshal(h)
	if err != nil {
		// Only plain data is marshalled; this cannot happen.
		s.log.Error("failed to encode health", zap.Error(err))
		return code
	}
	_, _ = w.Write(body)
	return code
}

// Run listens on the configured address and serves until ctx is done. It
// returns the listen error if the socket cannot be opened (kube-proxy retries
// every 5 s; that policy is the caller's).
func (s *ProxyHealthServer) Run(ctx context.Context) error {
	l, err := s.listener.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("failed to start proxy healthz on %s: %w", s.addr, err)
	}
	return s.Serve(ctx, l)
}

// Serve serves /healthz and /livez on l until ctx is done, then closes l.
func (s *ProxyHealthServer) Serve(ctx context.Context, l net.Listener) error {
	s.log.Info("serving proxy health", zap.String("address", l.Addr().String()))
	return serveUntilDone(ctx, newHTTPServer(s.Handler()), l)
}

// serveUntilDone runs srv on l and closes it when ctx is done.
func serveUntilDone(ctx context.Context, srv *http.Server, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
