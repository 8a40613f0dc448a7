package ctcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
)

// The CLI's output on the fixed table, end to end: proxy debug endpoint →
// View → fake conntrack → annotation → formatting. Each case is a golden
// file holding stdout, then stderr after a marker when there is any.
func TestGolden(t *testing.T) {
	cases := []struct {
		golden string
		args   []string
	}{
		{"list.table.golden", []string{"list"}},
		{"list.wide.golden", []string{"list", "-o", "wide"}},
		{"list.json.golden", []string{"list", "-o", "json"}},
		{"list-service-dns-udp.golden", []string{"list", "--service", "kube-system/kube-dns", "--protocol", "udp"}},
		{"list-service-port.golden", []string{"list", "--service", "kube-system/kube-dns", "--port", "dns-tcp"}},
		{"list-service-port-number.golden", []string{"list", "--service", "default/web", "--port", "80"}},
		{"list-pod.golden", []string{"list", "--pod", "web-7c4d9-k2x8p"}},
		{"list-pod-gone.golden", []string{"list", "--pod", "coredns-gone-xyz"}},
		{"list-state-established.golden", []string{"list", "--state", "established"}},
		{"list-state-unreplied.golden", []string{"list", "--state", "UNREPLIED"}},
		{"list-none.golden", []string{"list", "--service", "default/syslog", "--protocol", "tcp"}},
		{"stale.table.golden", []string{"stale"}},
		{"stale.wide.golden", []string{"stale", "-o", "wide"}},
		{"stale.json.golden", []string{"stale", "-o", "json"}},
		{"stale-dns.golden", []string{"stale", "--service", "kube-system/kube-dns"}},
		{"flush-dry-run.golden", []string{"flush", "--service", "kube-system/kube-dns", "--dry-run"}},
		{"flush-dry-run.json.golden", []string{"flush", "--service", "kube-system/kube-dns", "--protocol", "udp", "--dry-run", "-o", "json"}},
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			e := newEnv(t)
			stdout, stderr, code := e.run(c.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr)
			}
			// The fake proxy's port changes from run to run.
			got := stdout
			if stderr != "" {
				got += "--- stderr ---\n" + stderr
			}
			got = strings.ReplaceAll(got, e.proxy.URL, "http://PROXY")
			golden(t, c.golden, got)
		})
	}
}

// The JSON output is what it says: every fixture flow of ours once, with
// the annotation the table shows.
func TestListJSON(t *testing.T) {
	e := newEnv(t)
	stdout, stderr, code := e.run("list", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var doc JSONDoc
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Node != "node1" || !strings.HasPrefix(doc.Source, "proxy http://") {
		t.Errorf("node %q source %q", doc.Node, doc.Source)
	}
	// 15 fixture flows, 3 not ours.
	if len(doc.Entries) != 12 {
		t.Fatalf("%d entries, want 12", len(doc.Entries))
	}
	byClient := map[string]JSONRow{}
	for _, r := range doc.Entries {
		byClient[r.Client] = r
	}
	for client, want := range map[string]struct{ svc, via, ep, pod, node, epState string }{
		"198.18.1.20:40001":         {"kube-system/kube-dns:dns", ViaClusterIP, "198.18.1.5:53", "coredns-6f5d8b7c9-abcde", "node1", EPReady},
		"198.18.1.21:40002":         {"kube-system/kube-dns:dns", ViaClusterIP, "198.18.2.7:53", "coredns-6f5d8b7c9-fghij", "node2", EPNotServing},
		"198.18.1.22:40003":         {"kube-system/kube-dns:dns", ViaClusterIP, "198.18.3.9:53", "", "", EPGone},
		"198.18.1.23:40004":         {"kube-system/kube-dns:dns", ViaClusterIP, "198.19.192.10:53", "", "", EPNotDNATed},
		"198.51.100.10:52000":       {"default/web:http", ViaNodePort, "198.18.1.9:8080", "web-7c4d9-k2x8p", "node1", EPReady},
		"198.51.100.11:52001":       {"default/web:http", ViaExternalIP, "198.18.1.9:8080", "web-7c4d9-k2x8p", "node1", EPReady},
		"198.51.100.12:6000":        {"default/game", ViaLoadBalancer, "198.18.2.4:7777", "game-0", "node2", EPReady},
		"198.51.100.13:6001":        {"default/game", ViaNodePort, "198.18.2.4:7777", "game-0", "node2", EPReady},
		"[2001:db8:10:1::21]:40011": {"kube-system/kube-dns:dns", ViaClusterIP, "[2001:db8:10:2::7]:53", "coredns-6f5d8b7c9-fghij", "node2", EPNotServing},
	} {
		r, ok := byClient[client]
		if !ok {
			t.Errorf("no entry for client %s", client)
			continue
		}
		if r.Service != want.svc || r.Via != want.via || r.Endpoint != want.ep || r.Pod != want.pod || r.Node != want.node || r.EPState != want.epState {
			t.Errorf("client %s: got %s via %s → %s pod %q node %q %s, want %+v", client, r.Service, r.Via, r.Endpoint, r.Pod, r.Node, r.EPState, want)
		}
	}
	for _, notOurs := range []string{"198.18.1.20:33000", "192.0.2.11:123", "198.51.100.14:6003"} {
		if _, ok := byClient[notOurs]; ok {
			t.Errorf("flow from %s is not to a Service but was listed", notOurs)
		}
	}
	if !e.ct.closed {
		t.Error("conntrack socket not closed")
	}
}

// stale finds exactly the entries sent where nobody answers, with reasons.
func TestStaleReasons(t *testing.T) {
	e := newEnv(t)
	stdout, stderr, code := e.run("stale", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var doc JSONDoc
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range doc.Entries {
		got[r.Client] = r.ReasonCode + ": " + r.Reason
	}
	want := map[string]string{
		"198.18.1.21:40002":         "endpoint_gone: endpoint 198.18.2.7:53 (pod coredns-6f5d8b7c9-fghij on node2) is terminating and no longer serving",
		"198.18.1.22:40003":         "endpoint_gone: endpoint 198.18.3.9:53 is no longer an endpoint",
		"198.18.1.23:40004":         "not_nated: Service had no endpoints when the entry was created (not DNATed)",
		"198.18.1.20:41000":         "no_endpoints: Service has no endpoints, so the entry was not DNATed (kpr removes it when endpoints appear)",
		"[2001:db8:10:1::21]:40011": "endpoint_gone: endpoint [2001:db8:10:2::7]:53 (pod coredns-6f5d8b7c9-fghij on node2) is terminating and no longer serving",
	}
	if len(got) != len(want) {
		t.Errorf("got %d stale entries, want %d: %v", len(got), len(want), got)
	}
	for c, w := range want {
		if got[c] != w {
			t.Errorf("client %s: reason %q, want %q", c, got[c], w)
		}
	}
}

// flush --dry-run lists and deletes nothing; flush deletes exactly the
// Service's (narrowed) entries and says how many.
func TestFlush(t *testing.T) {
	t.Run("dry-run", func(t *testing.T) {
		e := newEnv(t)
		before := e.ct.Flows()
		stdout, stderr, code := e.run("flush", "--service", "kube-system/kube-dns", "--dry-run")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if e.ct.DeleteCalls != 0 || len(e.ct.Flows()) != len(before) {
			t.Errorf("dry run deleted: %d Delete calls, %d → %d flows", e.ct.DeleteCalls, len(before), len(e.ct.Flows()))
		}
		mustContain(t, "stdout", stdout, "dry run: would delete 6 conntrack entries of Service kube-system/kube-dns; nothing was deleted")
	})
	t.Run("service", func(t *testing.T) {
		e := newEnv(t)
		stdout, stderr, code := e.run("flush", "--service", "kube-system/kube-dns")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		mustContain(t, "stdout", stdout, "deleted 6 conntrack entries of Service kube-system/kube-dns\n")
		for _, fl := range e.ct.Flows() {
			if fl.Orig.DstPort == 53 {
				t.Errorf("DNS flow left: %s", fl.String())
			}
		}
		if n := len(e.ct.Flows()); n != len(fixtureFlows())-6 {
			t.Errorf("%d flows left, want %d", n, len(fixtureFlows())-6)
		}
	})
	t.Run("port-and-protocol", func(t *testing.T) {
		e := newEnv(t)
		stdout, stderr, code := e.run("flush", "--service", "default/web", "--port", "http", "--protocol", "tcp", "--state", "TIME_WAIT")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		mustContain(t, "stdout", stdout, "deleted 1 conntrack entry of Service default/web port http\n", "198.51.100.10:52000")
		if e.ct.DeleteRequested != 1 || len(e.ct.Flows()) != len(fixtureFlows())-1 {
			t.Errorf("requested %d deletions, %d flows left", e.ct.DeleteRequested, len(e.ct.Flows()))
		}
	})
	t.Run("nothing", func(t *testing.T) {
		e := newEnv(t)
		stdout, _, code := e.run("flush", "--service", "default/syslog", "--protocol", "tcp")
		if code != 0 || !strings.Contains(stdout, "no conntrack entries of Service default/syslog to delete") {
			t.Errorf("exit %d, stdout %q", code, stdout)
		}
		if e.ct.DeleteCalls != 0 {
			t.Error("Delete called with nothing to delete")
		}
	})
	t.Run("already-gone", func(t *testing.T) {
		// An entry that the kernel replaced (new id) between dump and
		// delete is left alone and counted as gone.
		e := newEnv(t)
		e.cfg.OpenConntrack = func() (Conntrack, error) { return &racingCT{fakeCT: e.ct}, nil }
		stdout, stderr, code := e.run("flush", "--service", "default/game")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		mustContain(t, "stdout", stdout, "deleted 1 conntrack entry of Service default/game (1 had already gone)")
	})
}

// racingCT re-creates the first flow (new id) after each dump, as the
// kernel does when an entry expires and a new packet arrives.
type racingCT struct{ *fakeCT }

func (r *racingCT) List(fam model.Family, f conntrack.Filter) ([]conntrack.Flow, error) {
	flows, err := r.fakeCT.List(fam, f)
	for _, fl := range flows {
		if fl.Orig.Dst.String() == "203.0.113.20" {
			fl.ID = 0
			r.fakeCT.Add(fl)
		}
	}
	return flows, err
}

// Bad input: a clear error, exit code 2 for usage and 1 otherwise, and
// nothing deleted.
func TestErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown-service", []string{"list", "--service", "default/nope"}, 1, "Service default/nope not found (source: proxy http://"},
		{"unknown-service-flush", []string{"flush", "--service", "default/nope"}, 1, "Service default/nope not found"},
		{"unknown-port", []string{"flush", "--service", "kube-system/kube-dns", "--port", "http"}, 1, `Service kube-system/kube-dns has no port "http" (it has dns 53/UDP, dns-tcp 53/TCP)`},
		{"bad-service", []string{"list", "--service", "kube-dns"}, 2, `--service wants namespace/name, got "kube-dns"`},
		{"flush-needs-service", []string{"flush"}, 2, "flush needs --service namespace/name"},
		{"bad-protocol", []string{"list", "--protocol", "icmp"}, 2, `--protocol "icmp": want tcp, udp or sctp`},
		{"bad-state", []string{"list", "--state", "open"}, 2, `unknown state "open"`},
		{"bad-output", []string{"list", "-o", "yaml"}, 2, `unknown output format "yaml"`},
		{"port-without-service", []string{"list", "--port", "53"}, 2, "--port needs --service"},
		{"bad-events", []string{"watch", "--events", "new,gone"}, 2, `unknown event type "gone"`},
		{"extra-arg", []string{"list", "kube-dns"}, 2, `unexpected argument "kube-dns"`},
		{"unknown-flag", []string{"list", "--servce", "a/b"}, 2, "unknown flag: --servce"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			n := len(e.ct.Flows())
			stdout, stderr, code := e.run(c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			mustContain(t, "stderr", stderr, c.want)
			if stdout != "" {
				t.Errorf("stdout not empty on error: %q", stdout)
			}
			if len(e.ct.Flows()) != n || e.ct.DeleteCalls != 0 {
				t.Error("something was deleted")
			}
		})
	}
	t.Run("unknown-command", func(t *testing.T) {
		e := newEnv(t)
		_, stderr, code := e.runCtx(context.Background(), "lsit")
		if code != 2 || !strings.Contains(stderr, `unknown command "lsit"`) {
			t.Errorf("exit %d stderr %q", code, stderr)
		}
	})
}

// EPERM from netlink (not root, no CAP_NET_ADMIN) becomes advice, wherever
// it comes from.
func TestPermissionError(t *testing.T) {
	eperm := fmt.Errorf("dumping conntrack table: %w", &os.SyscallError{Syscall: "recvmsg", Err: unix.EPERM})
	for _, c := range []struct {
		name  string
		args  []string
		setup func(*env)
	}{
		{"list", []string{"list"}, func(e *env) { e.ct.ListErr = eperm }},
		{"stale", []string{"stale"}, func(e *env) { e.ct.ListErr = eperm }},
		{"open", []string{"list"}, func(e *env) { e.openErr = unix.EPERM }},
		{"delete", []string{"flush", "--service", "default/game"}, func(e *env) { e.ct.DeleteErr = eperm }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.setup(e)
			_, stderr, code := e.run(c.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			mustContain(t, "stderr", stderr, "permission denied by the kernel", "needs root or CAP_NET_ADMIN")
		})
	}
	if err := kernelError("x", eperm); !errors.Is(err, ErrPermission) {
		t.Errorf("kernelError(EPERM) = %v, not ErrPermission", err)
	}
	if err := kernelError("x", unix.ENOBUFS); errors.Is(err, ErrPermission) {
		t.Errorf("ENOBUFS mapped to a permission error: %v", err)
	}
}

// With the proxy down and no kubeconfig, the error says both were tried.
func TestNoSource(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", filepath.Join(home, "missing-kubeconfig"))
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	e := newEnv(t)
	e.cfg.KubeClient = DefaultKubeClient // the real kubeconfig search
	url := e.proxy.URL
	e.proxy.Close()
	_, stderr, code := e.runCtx(context.Background(), "list", "--proxy-url", url)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	mustContain(t, "stderr", stderr,
		"no Service data: tried the running proxy and the apiserver",
		"proxy: proxy debug endpoint "+url+"/debug/kpr/snapshot is unreachable",
		"apiserver: no kubeconfig found (tried --kubeconfig, $KUBECONFIG, ~/.kube/config and the in-cluster service account)")

	// --source proxy alone names only the proxy.
	_, stderr, _ = e.runCtx(context.Background(), "list", "--source", "proxy", "--proxy-url", url)
	if !strings.Contains(stderr, "is unreachable") || strings.Contains(stderr, "kubeconfig") {
		t.Errorf("--source proxy: %s", stderr)
	}
	// An explicit kubeconfig that does not exist is named.
	_, stderr, _ = e.runCtx(context.Background(), "list", "--source", "api", "--kubeconfig", filepath.Join(home, "nope"))
	mustContain(t, "stderr", stderr, filepath.Join(home, "nope"))
}

// A proxy without the debug view, or with garbage, is an error that says so.
func TestProxyBadAnswers(t *testing.T) {
	for _, c := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"404", http.StatusNotFound, "404 page not found", "answered 404 Not Found: 404 page not found"},
		{"garbage", http.StatusOK, "{not json", "bad snapshot JSON"},
		{"bad-ip", http.StatusOK, `{"node":"n","services":[{"namespace":"a","name":"b","protocol":"UDP","family":"IPv4","clusterIP":"300.1.1.1","port":53,"endpoints":[]}]}`, "service a/b: clusterIP"},
		{"wrong-family", http.StatusOK, `{"node":"n","services":[{"namespace":"a","name":"b","protocol":"UDP","family":"IPv6","clusterIP":"198.19.192.1","port":53,"endpoints":[]}]}`, "clusterIP 198.19.192.1 is not an IPv6 address"},
		{"bad-protocol", http.StatusOK, `{"node":"n","services":[{"namespace":"a","name":"b","protocol":"ICMP","family":"IPv4","clusterIP":"198.19.192.1","port":53,"endpoints":[]}]}`, `unknown protocol "ICMP"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.status, e.snapshot = c.status, []byte(c.body)
			_, stderr, code := e.run("list")
			if code != 1 {
				t.Errorf("exit %d", code)
			}
			mustContain(t, "stderr", stderr, c.want)
		})
	}
}

// Every command has help with examples, on stdout, exit 0.
func TestHelp(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		stdout, _, code := e.runCtx(context.Background(), args...)
		if code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
		mustContain(t, "top help", stdout, "Commands:", "list", "stale", "flush", "watch", "Examples:")
	}
	for _, cmd := range commands {
		for _, args := range [][]string{{cmd.name, "--help"}, {"help", cmd.name}} {
			stdout, _, code := e.runCtx(context.Background(), args...)
			if code != 0 {
				t.Errorf("%v: exit %d", args, code)
			}
			mustContain(t, strings.Join(args, " "), stdout, "Usage: proxy conntrack "+cmd.name, "Examples:", "--source", "--proxy-url", "--kubeconfig", "Flags:")
		}
	}
	_, stderr, code := e.runCtx(context.Background())
	if code != 2 || !strings.Contains(stderr, "Commands:") {
		t.Errorf("no args: exit %d, stderr %q", code, stderr)
	}
}

func TestFormatTimeout(t *testing.T) {
	for in, want := range map[uint32]string{0: "0s", 59: "59s", 60: "1m00s", 252: "4m12s", 3600: "1h00m", 11040: "3h04m", 86400: "1d00h", 431999: "4d23h"} {
		if got := FormatTimeout(in); got != want {
			t.Errorf("FormatTimeout(%d) = %q, want %q", in, got, want)
		}
	}
}
