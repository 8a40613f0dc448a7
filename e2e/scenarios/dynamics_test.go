package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kpr-proxy/kpr/e2e/echo"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

// loadGen sends echo queries continuously from every client pod, one
// goroutine per (client, protocol), and records every outcome.
type loadGen struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	ok    int
	fails []string
	byPod map[string]int
}

// startLoad starts the load; each goroutine sends a query every interval
// (a new connection or socket each time, so every one is balanced afresh).
func (e *env) startLoad(t *testing.T, addr string, interval time.Duration, protos ...string) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loadGen{cancel: cancel, byPod: map[string]int{}}
	for _, cl := range e.clients {
		for _, proto := range protos {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for ctx.Err() == nil {
					start := time.Now()
					r, err := query(ctx, cl.NetNS, proto, addr)
					if ctx.Err() != nil {
						return // stopped mid-query: not a failure
					}
					l.mu.Lock()
					if err != nil {
						l.fails = append(l.fails, fmt.Sprintf("%s %s: %v", start.Format("15:04:05.000"), cl.Name, err))
					} else {
						l.ok++
						l.byPod[r.Pod]++
					}
					l.mu.Unlock()
					select {
					case <-ctx.Done():
					case <-time.After(interval):
					}
				}
			}()
		}
	}
	t.Cleanup(l.stop)
	return l
}

func (l *loadGen) stop() { l.cancel(); l.wg.Wait() }

func (l *loadGen) result() (ok int, fails []string, byPod map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	byPod = map[string]int{}
	for k, v := range l.byPod {
		byPod[k] = v
	}
	return l.ok, append([]string(nil), l.fails...), byPod
}

// testChurnUnderLoad: while clients on both nodes send TCP and UDP requests
// continuously, the Service is scaled up, pods are retired like a kubelet
// retires them (terminating first, killed only after the proxies stopped
// sending them new connections), a pod's readiness flips, and it is scaled
// down again. No request may fail.
func testChurnUnderLoad(t *testing.T, e *env) {
	ns := "s-churn"
	app := labels("web")
	pods := map[string]*framework.Pod{}
	add := func(name string, node int) { pods[name] = e.pod(t, ns, name, node, app) }
	add("a", 0)
	add("b", 1)
	svc := e.createService(t, newService(ns, "web", app, tcpPort("tcp", 80), udpPort("udp", 80)))
	vip := hostPort(clusterIP(t, svc, false), 80)
	targets := [][2]string{{"tcp", vip}, {"udp", vip}}
	expectAll := func(names ...string) {
		t.Helper()
		for _, cl := range e.clients {
			for _, tg := range targets {
				expectBackends(t, cl.NetNS, tg[0], tg[1], names...)
			}
		}
	}
	expectAll("a", "b")

	load := e.startLoad(t, vip, 20*time.Millisecond, "tcp", "udp")
	step := func(what string) {
		ok, fails, _ := load.result()
		t.Logf("churn: %s (requests so far: %d ok, %d failed)", what, ok, len(fails))
	}

	add("c", 0)
	add("d", 1)
	expectAll("a", "b", "c", "d")
	step("scaled up to a b c d")

	e.retire(t, pods["a"], targets...)
	add("e", 1)
	expectAll("b", "c", "d", "e")
	step("replaced a with e")

	pods["d"].SetReady(t, false)
	for _, tg := range targets {
		e.waitNotSelected(t, tg[0], tg[1], "d")
	}
	pods["d"].SetReady(t, true)
	expectAll("b", "c", "d", "e")
	step("d was unready and ready again")

	e.retire(t, pods["b"], targets...)
	e.retire(t, pods["c"], targets...)
	expectAll("d", "e")
	step("scaled down to d e")

	load.stop()
	ok, fails, byPod := load.result()
	t.Logf("churn load: %d requests answered (%v), %d failed", ok, byPod, len(fails))
	if len(fails) > 0 {
		t.Errorf("%d of %d requests failed during churn; they all had a ready backend:\n%s", len(fails), ok+len(fails), strings.Join(fails, "\n"))
	}
	if ok < 100 {
		t.Errorf("only %d requests were sent during churn; the load generator did not run", ok)
	}
}

// testPortAddRemove: ports added to a live Service start working, a removed
// one stops, and the others keep working throughout.
func testPortAddRemove(t *testing.T, e *env) {
	ns := "s-ports"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	svc := e.createService(t, newService(ns, "web", labels("web"), tcpPort("p80", 80)))
	ip := clusterIP(t, svc, false)
	cl := e.clients[0].NetNS
	expectBackends(t, cl, "tcp", hostPort(ip, 80), "a", "b")

	e.updateService(t, ns, "web", func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports,
			udpPort("p81", 81),
			corev1.ServicePort{Name: "p82", Protocol: corev1.ProtocolTCP, Port: 82, TargetPort: intstr.FromString("http")},
		)
	})
	expectBackends(t, cl, "udp", hostPort(ip, 81), "a", "b")
	expectBackends(t, cl, "http", hostPort(ip, 82), "a", "b")
	expectBackends(t, cl, "tcp", hostPort(ip, 80), "a", "b")

	e.updateService(t, ns, "web", func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[1:] })
	framework.Eventually(t, programTimeout, "removed port 80 stops answering", func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		r, err := cl.Query(ctx, "tcp", hostPort(ip, 80))
		if err == nil {
			return fmt.Errorf("port 80 still answered by %s", r.Pod)
		}
		return nil
	})
	expectBackends(t, cl, "udp", hostPort(ip, 81), "a", "b")
	expectBackends(t, cl, "http", hostPort(ip, 82), "a", "b")
}

// udpFlow is one client UDP socket (fixed source port) that keeps sending to
// a Service, the way a statsd or DNS client does.
type udpFlow struct {
	c   net.Conn
	buf []byte
}

func newUDPFlow(t *testing.T, from *framework.NetNS, addr string) *udpFlow {
	t.Helper()
	c, err := from.DialContext(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpFlow{c: c, buf: make([]byte, 64<<10)}
}

// ping sends one datagram and returns who answered ("" if nobody did within
// wait).
func (f *udpFlow) ping(wait time.Duration) (string, error) {
	if _, err := f.c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	_ = f.c.SetReadDeadline(time.Now().Add(wait))
	for {
		n, err := f.c.Read(f.buf)
		if err != nil {
			if isTimeout(err) {
				return "", nil
			}
			return "", err
		}
		var r echo.Reply
		if err := json.Unmarshal(f.buf[:n], &r); err != nil {
			return "", fmt.Errorf("bad reply %q: %v", f.buf[:n], err)
		}
		return r.Pod, nil
	}
}

// testUDPBackendReplaced: one client socket keeps sending to a UDP Service
// while its only backend is replaced by a new pod. The conntrack entry of
// the flow points at the old pod; once the old pod is gone the proxy must
// delete it (stale-entry cleanup), so the same socket reaches the new pod.
// While the old pod still serves (ready, then terminating), upstream
// kube-proxy leaves the flow alone, and so must kpr.
func testUDPBackendReplaced(t *testing.T, e *env) {
	ns := "s-udp-replace"
	old := e.pod(t, ns, "old", 1, labels("dns"))
	svc := e.createService(t, newService(ns, "dns", labels("dns"), udpPort("udp", 53)))
	vip := hostPort(clusterIP(t, svc, false), 53)
	cl := e.clients[0]
	expectBackends(t, cl.NetNS, "udp", vip, "old")

	flow := newUDPFlow(t, cl.NetNS, vip)
	framework.Eventually(t, programTimeout, "the flow reaches old", func(context.Context) error {
		who, err := flow.ping(300 * time.Millisecond)
		if err != nil {
			return err
		}
		if who != "old" {
			return fmt.Errorf("answered by %q", who)
		}
		return nil
	})
	// keepSending pings until cond says stop or timeout; it returns the
	// sequence of answers.
	keepSending := func(what string, timeout time.Duration, done func(who string) bool) []string {
		t.Helper()
		var answers []string
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			who, err := flow.ping(200 * time.Millisecond)
			if err != nil {
				t.Fatalf("%s: flow error: %v", what, err)
			}
			answers = append(answers, who)
			if done(who) {
				return answers
			}
			if who != "" {
				time.Sleep(50 * time.Millisecond) // pace the flow, ~10 datagrams/s
			}
		}
		t.Fatalf("%s: not done after %s; answers (\"\" = none): %q", what, timeout, compress(answers))
		return nil
	}

	e.pod(t, ns, "new", 1, labels("dns"))
	expectBackends(t, e.clients[1].NetNS, "udp", vip, "old", "new")
	expectBackends(t, cl.NetNS, "udp", vip, "old", "new")
	n := 0
	a := keepSending("old still ready", 10*time.Second, func(who string) bool { n++; return n >= 10 })
	if c := compress(a); len(c) != 1 || c[0] != "old×10" {
		t.Errorf("while old was ready and serving, the established flow was answered by %q; want old only (the conntrack entry must stay)", c)
	}

	old.Terminate(t, 30*time.Second)
	t.Logf("%s: old is terminating (graceful deletion, still serving)", time.Now().Format("15:04:05.000"))
	e.waitNotSelected(t, "udp", vip, "old")
	n = 0
	a = keepSending("old terminating", 10*time.Second, func(who string) bool { n++; return n >= 10 })
	if c := compress(a); len(c) != 1 || c[0] != "old×10" {
		t.Errorf("while old was terminating but serving, the established flow was answered by %q; upstream keeps flows to serving endpoints", c)
	}

	old.Finish(t)
	start := time.Now()
	t.Logf("%s: old is deleted", start.Format("15:04:05.000"))
	a = keepSending("after old was deleted", 20*time.Second, func(who string) bool { return who == "new" })
	t.Logf("flow moved to new %s after old was deleted; answers: %q", time.Since(start).Round(time.Millisecond), compress(a))
	n = 0
	a = keepSending("flow on new", 10*time.Second, func(who string) bool { n++; return n >= 10 })
	if c := compress(a); len(c) != 1 || c[0] != "new×10" {
		t.Errorf("after moving to new the flow was answered by %q, want new only", c)
	}
}

// compress turns ["a","a","","b"] into ["a×2","(none)×1","b×1"].
func compress(xs []string) []string {
	var out []string
	for i := 0; i < len(xs); {
		j := i
		for j < len(xs) && xs[j] == xs[i] {
			j++
		}
		name := xs[i]
		if name == "" {
			name = "(none)"
		}
		out = append(out, fmt.Sprintf("%s×%d", name, j-i))
		i = j
	}
	return out
}
