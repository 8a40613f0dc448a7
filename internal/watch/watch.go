package watch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kpr-proxy/kpr/internal/model"
)

// DefaultResyncPeriod is kube-proxy's --config-sync-period default.
const DefaultResyncPeriod = 15 * time.Minute

// Recorder receives the counts the proxy exports as metrics. Its methods are
// called from informer goroutines, some with the tracker's lock held: they
// must not block or call back into the Watcher.
type Recorder interface {
	// InvalidObject counts one skipped bad part of an object. kind is
	// "Service", "EndpointSlice" or "Node"; reason is a stable snake_case
	// word such as "invalid_port".
	InvalidObject(kind, reason string)
	// ServiceChange counts one Service event
	// (kubeproxy_sync_proxy_rules_service_changes_total; like kube-proxy
	// this includes periodic resync events).
	ServiceChange()
	// EndpointChange counts one EndpointSlice event of a family the proxy
	// runs (kubeproxy_sync_proxy_rules_endpoint_changes_total).
	EndpointChange()
	// ChangesPending reports the number of Services with a pending change
	// and of pending EndpointSlice changes
	// (kubeproxy_sync_proxy_rules_{service,endpoint}_changes_pending).
	ChangesPending(services, endpoints int)
}

type nopRecorder struct{}

func (nopRecorder) InvalidObject(string, string) {}
func (nopRecorder) ServiceChange()               {}
func (nopRecorder) EndpointChange()              {}
func (nopRecorder) ChangesPending(int, int)      {}

// Config configures a Watcher.
type Config struct {
	Client kubernetes.Interface
	// NodeName is this node's name: it selects the Node object and marks
	// endpoints on this node as local.
	NodeName string
	// Families are the IP families the proxy runs (one or both), in the
	// order State.Families reports them.
	Families []model.Family
	// ResyncPeriod is --config-sync-period; 0 means DefaultResyncPeriod.
	ResyncPeriod time.Duration
	// Logger; nil discards.
	Logger *zap.Logger
	// Recorder; nil discards.
	Recorder Recorder
	// RequestSync is called after every event that changed something the
	// proxy programs. It is called from informer goroutines and must not
	// block (typically a non-blocking send on a channel of capacity 1).
	RequestSync func()
	// IgnoreExternalIPs drops spec.externalIPs (feature gate
	// AllowServiceExternalIPs=false).
	IgnoreExternalIPs bool
}

// Watcher watches Services, EndpointSlices and this Node and hands out
// immutable snapshots of them.
type Watcher struct {
	cfg       Config
	log       *zap.Logger
	rec       Recorder
	t         *tracker
	informers []cache.SharedIndexInformer
	regs      []cache.ResourceEventHandlerRegistration
	wg        sync.WaitGroup
	started   bool
	startMu   sync.Mutex
}

// New validates cfg and sets up the informers and their handlers; nothing
// talks to the apiserver before Start.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("watch: Config.Client is required")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("watch: Config.NodeName is required")
	}
	if len(cfg.Families) == 0 || len(cfg.Families) > 2 {
		return nil, fmt.Errorf("watch: need one or two families, got %v", cfg.Families)
	}
	for i, f := range cfg.Families {
		if f != model.IPv4 && f != model.IPv6 {
			return nil, fmt.Errorf("watch: unknown family %v", f)
		}
		if i > 0 && cfg.Families[0] == f {
			return nil, fmt.Errorf("watch: family %v given twice", f)
		}
	}
	if cfg.ResyncPeriod < 0 {
		return nil, fmt.Errorf("watch: negative resync period %v", cfg.ResyncPeriod)
	}
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Recorder == nil {
		cfg.Recorder = nopRecorder{}
	}
	if cfg.RequestSync == nil {
		cfg.RequestSync = func() {}
	}
	w := &Watcher{
		cfg: cfg,
		log: cfg.Logger,
		rec: cfg.Recorder,
		t:   newTracker(cfg.Families, cfg.NodeName, cfg.Recorder, time.Now()),
	}
	if err := w.setupInformers(); err != nil {
		return nil, err
	}
	return w, nil
}

// Start runs the informers until ctx is cancelled. It may be called once.
func (w *Watcher) Start(ctx context.Context) {
	w.startMu.Lock()
	defer w.startMu.Unlock()
	if w.started {
		return
	}
	w.started = true
	for _, inf := range w.informers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
}

// Wait blocks until the informers have stopped (after Start's ctx ended).
func (w *Watcher) Wait() { w.wg.Wait() }

// Synced reports whether the initial lists of all informers have been
// delivered to the tracker.
func (w *Watcher) Synced() bool {
	for _, r := range w.regs {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

// WaitForSync blocks until Synced or ctx ends.
func (w *Watcher) WaitForSync(ctx context.Context) error {
	syncs := make([]cache.InformerSynced, len(w.regs))
	for i, r := range w.regs {
		syncs[i] = r.HasSynced
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("watch: informers not synced: %w", context.Cause(ctx))
	}
	return nil
}

// Snapshot folds every change recorded since the previous call into new
// per-family snapshots and reports what changed. Changes are consumed: if
// programming them fails, the caller must fall back to a full sync (each
// snapshot is always complete). It is meant for the one sync goroutine;
// concurrent calls are safe but each change is reported to only one of them.
func (w *Watcher) Snapshot() State { return w.t.snapshot() }

// Pending returns the number of Services with a pending change and of
// pending EndpointSlice changes.
func (w *Watcher) Pending() (services, endpoints int) { return w.t.pending() }

// Nodes returns the current node facts per family (only the name before the
// Node object has been seen).
func (w *Watcher) Nodes() map[model.Family]*model.Node {
	n, _, _ := w.t.nodeState()
	return w.nodeMap(n)
}

func (w *Watcher) nodeMap(n nodeFacts) map[model.Family]*model.Node {
	out := make(map[model.Family]*model.Node, len(w.cfg.Families))
	for _, f := range w.cfg.Families {
		out[f] = n[famIdx(f)]
	}
	return out
}

// NodeNeed says what WaitForNode waits for besides the Node object itself.
type NodeNeed uint8

const (
	// NeedAddresses: at least one node address (kube-proxy waits for the
	// node IPs before it starts).
	NeedAddresses NodeNeed = 1 << iota
	// NeedPodCIDRs: at least one pod CIDR (detect-local-mode NodeCIDR).
	NeedPodCIDRs
)

// WaitForNode blocks until this node's Node object has been seen and has
// what need asks for, or ctx ends (give it the timeout: kube-proxy waits
// 30 s for addresses and 5 min for pod CIDRs). It returns the node facts as
// they are when it returns, also on error.
func (w *Watcher) WaitForNode(ctx context.Context, need NodeNeed) (map[model.Family]*model.Node, error) {
	for {
		n, seen, changed := w.t.nodeState()
		missing := ""
		switch {
		case !seen:
			missing = "Node object not seen"
		case need&NeedAddresses != 0 && !anyNode(n, func(m *model.Node) bool { return len(m.Addresses) > 0 }):
			missing = "node has no addresses"
		case need&NeedPodCIDRs != 0 && !anyNode(n, func(m *model.Node) bool { return len(m.PodCIDRs) > 0 }):
			missing = "node has no pod CIDRs"
		}
		if missing == "" {
			return w.nodeMap(n), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return w.nodeMap(n), fmt.Errorf("watch: waiting for node %q: %s: %w", w.cfg.NodeName, missing, context.Cause(ctx))
		}
	}
}

func anyNode(n nodeFacts, ok func(*model.Node) bool) bool {
	for _, m := range n {
		if m != nil && ok(m) {
			return true
		}
	}
	return false
}
