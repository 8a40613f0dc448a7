package routes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Defaults for Config.
const (
	DefaultResyncPeriod = time.Minute
	maxRetryDelay       = 30 * time.Second
	minRetryDelay       = time.Second
)

// Config configures the Controller.
type Config struct {
	Client kubernetes.Interface
	// NodeName is this node's Node object name.
	NodeName string
	// Table is where routes go; nil disables routing (only OnLocalNode
	// runs, e.g. single-node clusters or when something else routes).
	Table Table
	// Protocol marks podnet's routes; 0 means DefaultProtocol.
	Protocol int
	Logger   *zap.Logger
	// ResyncPeriod re-checks the kernel even without Node changes, so a
	// route someone deleted comes back. 0 means DefaultResyncPeriod.
	ResyncPeriod time.Duration
	// OnLocalNode is called with this node's Node object whenever its pod
	// CIDRs change (and once at start when it has any); an error retries it.
	OnLocalNode func(*v1.Node) error
}

// Controller watches Nodes (one informer) and reconciles routes from a
// single goroutine: event handlers only request a sync.
type Controller struct {
	cfg  Config
	log  *zap.Logger
	kick chan struct{}

	// touched only by the sync goroutine
	lastLocal string
	lastSkips string
}

// New validates cfg and returns a Controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("routes: no Kubernetes client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("routes: no node name (set --node-name or NODE_NAME)")
	}
	if cfg.Protocol == 0 {
		cfg.Protocol = DefaultProtocol
	}
	if cfg.Protocol < 5 || cfg.Protocol > 255 {
		return nil, fmt.Errorf("routes: route protocol %d out of range [5, 255] (0-4 belong to the kernel)", cfg.Protocol)
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Controller{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1)}, nil
}

func (c *Controller) requestSync() {
	select {
	case c.kick <- struct{}{}:
	default: // a sync is already pending; it will see this change too
	}
}

// routeFacts is what of a Node matters here; heartbeat-only updates are
// dropped by comparing it.
func routeFacts(n *v1.Node) string {
	var b strings.Builder
	b.WriteString(n.Spec.PodCIDR)
	for _, c := range n.Spec.PodCIDRs {
		b.WriteString("," + c)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			b.WriteString(";" + a.Address)
		}
	}
	return b.String()
}

// Run watches Nodes and keeps routes until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 0)
	nodes := factory.Core().V1().Nodes()
	inf := nodes.Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.requestSync() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*v1.Node)
			n, ok2 := newObj.(*v1.Node)
			if !ok1 || !ok2 || routeFacts(o) != routeFacts(n) {
				c.requestSync()
			}
		},
		DeleteFunc: func(any) { c.requestSync() },
	}); err != nil {
		return fmt.Errorf("routes: adding Node event handler: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("routes: Node cache did not sync: %w", ctx.Err())
	}
	c.log.Info("watching nodes", zap.String("node_name", c.cfg.NodeName), zap.Bool("routes_enabled", c.cfg.Table != nil), zap.Int("route_protocol", c.cfg.Protocol))

	resync := time.NewTicker(c.cfg.ResyncPeriod)
	defer resync.Stop()
	retry := time.NewTimer(0)
	<-retry.C
	delay := minRetryDelay
	c.requestSync()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-resync.C:
		case <-retry.C:
		}
		if err := c.sync(nodes.Lister()); err != nil {
			c.log.Error("sync failed; will retry", zap.Error(err), zap.Duration("retry_in", delay))
			retry.Reset(delay)
			delay = min(delay*2, maxRetryDelay)
			continue
		}
		delay = minRetryDelay
	}
}

func (c *Controller) sync(lister listersv1.NodeLister) error {
	list, err := lister.List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	if err := c.syncLocal(list); err != nil {
		errs = append(errs, err)
	}
	if c.cfg.Table != nil {
		if err := c.SyncRoutes(list); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) syncLocal(list []*v1.Node) error {
	if c.cfg.OnLocalNode == nil {
		return nil
	}
	i := slices.IndexFunc(list, func(n *v1.Node) bool { return n.Name == c.cfg.NodeName })
	if i < 0 {
		c.log.Warn("own Node object not found", zap.String("node_name", c.cfg.NodeName))
		return nil
	}
	self := list[i]
	cidrs, _ := PodCIDRs(self)
	if len(cidrs) == 0 {
		if c.lastLocal != "-" {
			c.log.Warn("own Node has no podCIDR yet; no CNI config written until it does", zap.String("node_name", c.cfg.NodeName))
			c.lastLocal = "-"
		}
		return nil
	}
	facts := routeFacts(self)
	if facts == c.lastLocal {
		return nil
	}
	if err := c.cfg.OnLocalNode(self); err != nil {
		return fmt.Errorf("local node %s: %w", self.Name, err)
	}
	c.lastLocal = facts
	return nil
}

// SyncRoutes makes the table match nodes once (Run calls it; exported for
// callers that bring their own Node list).
func (c *Controller) SyncRoutes(nodes []*v1.Node) error {
	desired, skips := Desired(nodes, c.cfg.NodeName, c.cfg.Protocol)
	if s := fmt.Sprint(skips); s != c.lastSkips {
		for _, sk := range skips {
			c.log.Warn("no route for node", zap.String("node", sk.Node), zap.String("reason", sk.Reason))
		}
		c.lastSkips = s
	}
	current, err := c.cfg.Table.List()
	if err != nil {
		return err
	}
	ch := Plan(desired, current, c.cfg.Protocol)
	for _, r := range ch.Conflicts {
		c.log.Warn("route destination already routed by someone else; leaving it", zap.Stringer("dst", r.Dst), zap.Stringer("want_via", r.Via))
	}
	var errs []error
	for _, r := range ch.Delete {
		if err := c.cfg.Table.Delete(r); err != nil {
			errs = append(errs, err)
			continue
		}
		c.log.Info("route deleted", zap.Stringer("dst", r.Dst), zap.Stringer("via", r.Via))
	}
	for _, r := range ch.Replace {
		if err := c.cfg.Table.Replace(r); err != nil {
			errs = append(errs, err)
			continue
		}
		c.log.Info("route set", zap.Stringer("dst", r.Dst), zap.Stringer("via", r.Via))
	}
	return errors.Join(errs...)
}
