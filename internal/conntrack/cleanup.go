package conntrack

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// CleanerConfig configures a Cleaner.
type CleanerConfig struct {
	// Family is the IP family this cleaner serves (one cleaner per family).
	Family model.Family
	// Conntrack is the kernel boundary (NewNetlink, or the fake).
	Conntrack Interface
	// Logger receives structured logs; required.
	Logger *zap.Logger
	// Metrics may be nil (nothing recorded).
	Metrics *metrics.Metrics
	// Now is the clock for the reconcile-duration metric; nil means
	// time.Now.
	Now func() time.Time
}

// Cleaner deletes stale UDP/SCTP conntrack entries after each successful
// sync of one IP family. It is not safe for concurrent use: like every
// kernel-touching step it runs on the single sync goroutine.
type Cleaner struct {
	cfg CleanerConfig
	log *zap.Logger

	// needFull makes the next Cleanup examine every Service port: after
	// an error (some stale entries may have survived) and before the
	// first successful pass.
	needFull bool
	// lastNodeName/lastNodeZone: endpoint selection depends on them
	// (topology), so a change re-examines everything even though no
	// Service port changed.
	lastNodeName, lastNodeZone string
}

// Result describes one Cleanup pass.
type Result struct {
	// Examined is how many UDP/SCTP Service ports were looked at.
	Examined int
	// Dumped is how many flows the dump returned (0 if no dump was needed).
	Dumped int
	// Stale is how many flows were selected for deletion.
	Stale int
	// Deleted is how many entries were actually removed (less than Stale
	// when some expired in between).
	Deleted int
	// Full: every Service port was examined.
	Full bool
}

// NewCleaner validates cfg and returns a Cleaner.
func NewCleaner(cfg CleanerConfig) (*Cleaner, error) {
	if cfg.Family != model.IPv4 && cfg.Family != model.IPv6 {
		return nil, fmt.Errorf("conntrack cleaner: invalid IP family %v", cfg.Family)
	}
	if cfg.Conntrack == nil {
		return nil, errors.New("conntrack cleaner: Conntrack is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("conntrack cleaner: Logger is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Cleaner{
		cfg:      cfg,
		log:      cfg.Logger.With(zap.String("ip_family", cfg.Family.String())),
		needFull: true,
	}, nil
}

// Cleanup runs after a successful sync that programmed cur (prev is the
// snapshot of the previous successful sync, nil if none). Only Service
// ports that differ between them are examined, unless the previous pass
// failed or the node's topology facts changed, in which case all are.
// It makes at most one dump and deletes only the chosen flows. The error
// is returned, not logged: the caller decides (the next pass is full).
func (c *Cleaner) Cleanup(prev, cur *model.Snapshot, node *model.Node) (Result, error) {
	start := c.cfg.Now()
	res, err := c.cleanup(prev, cur, node)
	if err != nil {
		c.needFull = true
	}
	c.cfg.Metrics.ObserveConntrackReconcile(c.cfg.Family, c.cfg.Now().Sub(start), res.Deleted)
	// Passes that delete something are worth an info line; the common
	// nothing-to-do pass stays at debug.
	logf := c.log.Debug
	if res.Stale > 0 {
		logf = c.log.Info
	}
	logf("conntrack cleanup finished",
		zap.Bool("full", res.Full),
		zap.Int("examined", res.Examined),
		zap.Int("dumped", res.Dumped),
		zap.Int("stale", res.Stale),
		zap.Int("deleted", res.Deleted),
		zap.Duration("duration", c.cfg.Now().Sub(start)))
	return res, err
}

func (c *Cleaner) cleanup(prev, cur *model.Snapshot, node *model.Node) (Result, error) {
	var res Result
	if cur == nil {
		return res, errors.New("conntrack cleanup: current snapshot is nil")
	}
	if cur.Family != c.cfg.Family {
		return res, fmt.Errorf("conntrack cleanup: snapshot is %v, cleaner is %v", cur.Family, c.cfg.Family)
	}
	if prev != nil && prev.Family != c.cfg.Family {
		return res, fmt.Errorf("conntrack cleanup: previous snapshot is %v, cleaner is %v", prev.Family, c.cfg.Family)
	}
	name, zone := "", ""
	if node != nil {
		name, zone = node.Name, node.Zone
	}
	if name != c.lastNodeName || zone != c.lastNodeZone {
		c.needFull = true
	}
	if c.needFull {
		prev = nil
	}
	res.Full = prev == nil

	plan := NewPlan(prev, cur, node)
	res.Examined = len(plan.Examined())
	flows, err := c.dump(plan.Protocols())
	if err != nil {
		return res, err
	}
	res.Dumped = len(flows)

	stale := plan.Stale(flows)
	res.Stale = len(stale)
	if len(stale) > 0 {
		c.logStale(stale)
		del := make([]Flow, len(stale))
		for i := range stale {
			del[i] = stale[i].Flow
		}
		res.Deleted, err = c.cfg.Conntrack.Delete(del)
		if err != nil {
			return res, fmt.Errorf("deleting stale %s conntrack entries (%d of %d deleted): %w",
				c.cfg.Family, res.Deleted, len(del), err)
		}
	}
	c.needFull = false
	c.lastNodeName, c.lastNodeZone = name, zone
	return res, nil
}

// dump makes the pass's single dump: narrowed to the one protocol in use
// if there is just one, else the whole family filtered in Go.
func (c *Cleaner) dump(protos []uint8) ([]Flow, error) {
	var f Filter
	switch len(protos) {
	case 0:
		return nil, nil
	case 1:
		f.Protocol = protos[0]
	}
	flows, err := c.cfg.Conntrack.List(c.cfg.Family, f)
	if err != nil {
		return nil, fmt.Errorf("listing %s conntrack entries: %w", c.cfg.Family, err)
	}
	return flows, nil
}

// logStale logs one line per Service port (and reason) with entries to
// delete, and each flow at debug level.
func (c *Cleaner) logStale(stale []StaleFlow) {
	type key struct {
		svc    model.ServicePortName
		reason string
	}
	counts := map[key]int{}
	var order []key
	debug := c.log.Core().Enabled(zap.DebugLevel)
	for i := range stale {
		s := &stale[i]
		k := key{s.Service, s.Reason}
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
		if debug {
			c.log.Debug("deleting stale conntrack entry",
				zap.String("service", s.Service.String()),
				zap.String("reason", s.Reason),
				zap.String("flow", s.Flow.String()))
		}
	}
	for _, k := range order {
		c.log.Info("deleting stale conntrack entries",
			zap.String("service", k.svc.String()),
			zap.String("protocol", string(k.svc.Protocol)),
			zap.String("reason", k.reason),
			zap.Int("stale", counts[k]))
	}
}
