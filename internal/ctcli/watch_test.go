package ctcli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is written by the CLI goroutine and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startWatch runs `watch args...` until the returned stop is called, and
// returns once the watcher is subscribed to the fake.
func startWatch(t *testing.T, e *env, args ...string) (out, errOut *lockedBuffer, stop func() int) {
	t.Helper()
	out, errOut = &lockedBuffer{}, &lockedBuffer{}
	cfg := e.cfg
	cfg.Stdout, cfg.Stderr = out, errOut
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- New(cfg).Run(ctx, append(append([]string{"watch"}, args...), "--source", "proxy", "--proxy-url", e.proxy.URL))
	}()
	// The deadline only bounds a hang; it asserts no speed.
	deadline := time.Now().Add(30 * time.Second)
	for e.ct.Watchers() == 0 {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("watch exited with %d before subscribing: %s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("watch never subscribed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return out, errOut, func() int {
		cancel()
		return <-done
	}
}

func waitOutput(t *testing.T, b *lockedBuffer, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := b.String()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("expected output never came; got:\n%s", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// watch prints new and destroyed entries of our Services, annotated, and
// nothing else; Ctrl-C (ctx cancel) ends it with exit code 0.
func TestWatchTable(t *testing.T) {
	e := newEnv(t)
	out, errOut, stop := startWatch(t, e)
	notOurs := flow(tcp, "198.18.1.20:33001", "198.18.2.3:8080", "198.18.2.3:8080", "198.18.1.20:33001", assured, 100, established)
	dns := flow(udp, "198.18.1.50:40500", "198.19.192.10:53", "198.18.1.5:53", "198.18.1.50:40500", dnat, 30, 0)
	added := e.ct.Add(notOurs, dns)
	if _, err := e.ct.Delete(added[1:]); err != nil {
		t.Fatal(err)
	}
	s := waitOutput(t, out, func(s string) bool { return strings.Count(s, "\n") >= 3 })
	if code := stop(); code != 0 {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 events, got:\n%s", s)
	}
	if f := strings.Fields(lines[0]); f[0] != "EVENT" || f[1] != "SERVICE" {
		t.Errorf("header %q", lines[0])
	}
	for i, want := range []string{"NEW", "DESTROY"} {
		f := strings.Fields(lines[i+1])
		if f[0] != want || f[1] != "kube-system/kube-dns:dns" || f[2] != "udp" || f[3] != "198.18.1.50:40500" ||
			f[4] != "198.19.192.10:53" || f[5] != "198.18.1.5:53" || f[6] != "coredns-6f5d8b7c9-abcde" || f[7] != "node1" {
			t.Errorf("line %d: %q", i+1, lines[i+1])
		}
	}
	if strings.Contains(s, "33001") {
		t.Error("a flow that is not to a Service was printed")
	}
}

// watch -o json prints one object per line; --events and --service filter.
func TestWatchJSONFiltered(t *testing.T) {
	e := newEnv(t)
	out, errOut, stop := startWatch(t, e, "--events", "destroy", "--service", "default/web", "-o", "json")
	dns := flow(udp, "198.18.1.50:40500", "198.19.192.10:53", "198.18.1.5:53", "198.18.1.50:40500", dnat, 30, 0)
	web := flow(tcp, "198.18.1.51:50000", "198.19.192.20:80", "198.18.2.3:8080", "198.18.1.51:50000", assured|dnat, 100, established)
	added := e.ct.Add(dns, web)
	if _, err := e.ct.Delete(added); err != nil {
		t.Fatal(err)
	}
	s := waitOutput(t, out, func(s string) bool { return strings.Contains(s, "\n") })
	// A second web event proves the DNS one was filtered, not late.
	added = e.ct.Add(web)
	if _, err := e.ct.Delete(added); err != nil {
		t.Fatal(err)
	}
	s = waitOutput(t, out, func(s string) bool { return strings.Count(s, "\n") >= 2 })
	if code := stop(); code != 0 {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var r JSONRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Event != "DESTROY" || r.Service != "default/web:http" || r.Pod != "web-7c4d9-q9z7m" || r.Client != "198.18.1.51:50000" {
			t.Errorf("event %+v", r)
		}
	}
}

// watch reloads Service data every --refresh: a Service created after the
// watch started is recognised once the data is refreshed.
func TestWatchRefresh(t *testing.T) {
	e := newEnv(t)
	out, errOut, stop := startWatch(t, e, "--refresh", "1ms")
	e.mu.Lock()
	e.snapshot = []byte(`{"node":"node1","services":[{"namespace":"default","name":"late","protocol":"UDP","family":"IPv4",
		"clusterIP":"198.19.192.99","port":9000,"endpoints":[{"ip":"198.18.1.99","port":9000,"ready":true,"serving":true,"pod":"late-0","node":"node1","local":true}]}]}`)
	e.mu.Unlock()
	// Keep creating flows to the new Service until one is printed; the
	// loop bound only stops a hang.
	deadline := time.Now().Add(30 * time.Second)
	for port := uint16(50000); !strings.Contains(out.String(), "late-0"); port++ {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("new Service never recognised; stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
		e.ct.Add(flow(udp, netip.AddrPortFrom(netip.MustParseAddr("198.18.1.20"), port).String(), "198.19.192.99:9000",
			"198.18.1.99:9000", netip.AddrPortFrom(netip.MustParseAddr("198.18.1.20"), port).String(), dnat, 30, 0))
		time.Sleep(2 * time.Millisecond)
	}
	if code := stop(); code != 0 {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
	mustContain(t, "stdout", out.String(), "default/late", "198.19.192.99:9000", "198.18.1.99:9000")
}
