package takeover_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/takeover"
)

// guardHarness plays the proxy's sync loop: RequestSync records the request
// and sync() runs AfterSync as the loop would after a successful sync.
type guardHarness struct {
	t        *testing.T
	g        *takeover.Guard
	requests int
}

func newGuard(t *testing.T, tk *takeover.Takeover) *guardHarness {
	h := &guardHarness{t: t}
	h.g = takeover.NewGuard(takeover.GuardConfig{Takeover: tk, Logger: zaptest.NewLogger(t), RequestSync: func() { h.requests++ }})
	return h
}

func (h *guardHarness) sync(err error) { h.g.AfterSync(context.Background(), err) }

func TestGuardRunsAfterFirstSuccessfulSyncAndAgainWhenKubeProxyComesBack(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	h := newGuard(t, newTakeover(t, takeover.Config{Tables: tablesOf(node)}))

	if h.g.Check(context.Background()) {
		t.Fatal("Check acted before the first takeover")
	}
	h.sync(errors.New("sync failed"))
	if !strings.Contains(saveAll(t, tb), "KUBE-SERVICES") {
		t.Fatal("the takeover ran after a failed sync: kpr's rules may not be in place")
	}
	select {
	case <-h.g.Done():
		t.Fatal("Done before any takeover")
	default:
	}
	h.sync(nil)
	if strings.Contains(saveAll(t, tb), "KUBE-SERVICES") {
		t.Fatal("kube-proxy's rules still there after the first successful sync")
	}
	<-h.g.Done()
	if _, err, runs, reruns := h.g.Last(); err != nil || runs != 1 || reruns != 0 {
		t.Fatalf("after the first sync: err %v runs %d reruns %d", err, runs, reruns)
	}

	// A removal is followed by one full look at the next check (that is
	// what catches a kube-proxy stopped half-way through putting its rules
	// back); it finds nothing here.
	if !h.g.Check(context.Background()) || h.requests != 1 {
		t.Fatalf("no follow-up after a removal (requests %d)", h.requests)
	}
	h.sync(nil)
	if _, err, runs, _ := h.g.Last(); err != nil || runs != 2 {
		t.Fatalf("follow-up: err %v runs %d", err, runs)
	}

	// Then syncs and checks do nothing while kube-proxy stays away.
	h.sync(nil)
	if h.g.Check(context.Background()) || h.requests != 1 {
		t.Fatalf("Check acted with nothing of kube-proxy's there (requests %d)", h.requests)
	}
	h.sync(nil)
	if _, _, runs, _ := h.g.Last(); runs != 2 {
		t.Fatalf("%d runs, want still 2", runs)
	}

	// kube-proxy, still running, puts its rules back.
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	if !h.g.Check(context.Background()) || h.requests != 2 {
		t.Fatalf("Check did not notice kube-proxy's rules coming back (requests %d)", h.requests)
	}
	if !strings.Contains(saveAll(t, tb), "KUBE-SERVICES") {
		t.Fatal("Check changed the kernel; only the sync loop may")
	}
	h.sync(nil)
	if strings.Contains(saveAll(t, tb), "KUBE-SERVICES") {
		t.Fatal("kube-proxy's rules not removed again")
	}
	if _, err, runs, reruns := h.g.Last(); err != nil || runs != 3 || reruns != 2 {
		t.Fatalf("err %v runs %d reruns %d, want 3 runs, 2 reruns", err, runs, reruns)
	}

	// It is stopped half-way through putting them back: only chains no
	// cheap probe looks for. The follow-up run still finds and removes them.
	mustLoad(t, tb, []byte("*nat\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\nCOMMIT\n"))
	if present, where := h.g.Takeover().Present(context.Background()); present {
		t.Fatalf("the probe was expected to miss this partial state, found %s", where)
	}
	if !h.g.Check(context.Background()) {
		t.Fatal("no follow-up run after the removal")
	}
	h.sync(nil)
	if s := saveAll(t, tb); strings.Contains(s, "KUBE-NODEPORTS") || strings.Contains(s, "KUBE-MARK-MASQ") {
		t.Fatalf("partial leftovers not removed:\n%s", s)
	}
}

func TestGuardRetriesAFailedTakeover(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	tb.FailNextRestores(9, nil) // all 3 tables, in all 3 attempts of the first run
	h := newGuard(t, newTakeover(t, takeover.Config{Tables: tablesOf(node)}))
	h.sync(nil)
	if _, err, _, _ := h.g.Last(); err == nil {
		t.Fatal("the first run should have failed")
	}
	if !h.g.Check(context.Background()) || h.requests != 1 {
		t.Fatal("a failed takeover is not retried")
	}
	h.sync(nil)
	if _, err, runs, _ := h.g.Last(); err != nil || runs != 2 {
		t.Fatalf("retry: err %v, runs %d", err, runs)
	}
	if strings.Contains(saveAll(t, tb), "KUBE-SERVICES") {
		t.Fatal("kube-proxy's rules left after the retry")
	}
}

func TestGuardDryRunRunsOnceAndNeverRemoves(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	before := saveAll(t, tb)
	h := newGuard(t, newTakeover(t, takeover.Config{Tables: tablesOf(node), DryRun: true}))
	h.sync(nil)
	h.sync(nil)
	if h.g.Check(context.Background()) || h.requests != 0 {
		t.Fatal("dry run asked for a takeover")
	}
	if res, err, runs, _ := h.g.Last(); err != nil || runs != 1 || !res.DryRun || res.Plan.Empty() {
		t.Fatalf("dry run: err %v runs %d result %+v", err, runs, res)
	}
	if saveAll(t, tb) != before {
		t.Fatal("dry run changed iptables")
	}
}
