package conntrack_test

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// noHashsize wraps the real Sysctl and fails the test if the host-wide
// hashsize would be written: from a test namespace that would change the
// host (house rule), and ApplySysctls must not even try there.
type noHashsize struct {
	conntrack.ProcSysctl
	t *testing.T
}

func (n noHashsize) SetHashsize(v int) error {
	n.t.Errorf("SetHashsize(%d) called from a test namespace", v)
	return nil
}

// The proxy usually runs in a node's network namespace: there
// nf_conntrack_max is read-only (skipped with an info log, and the hashsize
// left alone) while the per-namespace timeouts are set.
func TestKernelApplySysctlsInNamespace(t *testing.T) {
	host := hostNetNS(t)
	n := netns.New(t, "ct-sysctl")
	rootUDP := readRoot(t, "net/netfilter/nf_conntrack_udp_timeout")
	rootMax := readRoot(t, "net/netfilter/nf_conntrack_max")

	cfg := conntrack.SysctlConfig{
		MaxPerCore: 1 << 18, Min: 1 << 17, // more than any default: would be a write
		TCPEstablishedTimeout: 23 * time.Hour, TCPCloseWaitTimeout: 61 * time.Minute,
		TCPBeLiberal: true, UDPTimeout: 33 * time.Second, UDPStreamTimeout: 121 * time.Second,
	}
	core, logs := observer.New(zapcore.InfoLevel)
	if err := n.Do(func() error {
		if err := requireNotNS(host); err != nil {
			return err
		}
		return conntrack.ApplySysctls(cfg, noHashsize{t: t}, zap.New(core))
	}); err != nil {
		t.Fatalf("ApplySysctls: %v", err)
	}

	want := map[string]string{
		"net.netfilter.nf_conntrack_tcp_timeout_established": "82800",
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  "3660",
		"net.netfilter.nf_conntrack_tcp_be_liberal":          "1",
		"net.netfilter.nf_conntrack_udp_timeout":             "33",
		"net.netfilter.nf_conntrack_udp_timeout_stream":      "121",
	}
	for k, v := range want {
		// Read back with the sysctl tool: an independent reader.
		if got := strings.TrimSpace(n.MustExec("sysctl", "-n", k)); got != v {
			t.Errorf("%s = %s in the namespace, want %s", k, got, v)
		}
	}
	skipped := logs.FilterMessageSnippet("nf_conntrack_max").All()
	if len(skipped) != 1 || skipped[0].Level != zapcore.InfoLevel {
		t.Errorf("want one info log about skipping nf_conntrack_max, got %v", logs.All())
	}
	// The host's values are untouched.
	if got := readRoot(t, "net/netfilter/nf_conntrack_udp_timeout"); got != rootUDP {
		t.Errorf("root namespace udp timeout changed: %d -> %d", rootUDP, got)
	}
	if got := readRoot(t, "net/netfilter/nf_conntrack_max"); got != rootMax {
		t.Errorf("root namespace nf_conntrack_max changed: %d -> %d", rootMax, got)
	}

	// Idempotent: a second run writes nothing.
	core2, logs2 := observer.New(zapcore.InfoLevel)
	if err := n.Do(func() error {
		if err := requireNotNS(host); err != nil {
			return err
		}
		return conntrack.ApplySysctls(cfg, noHashsize{t: t}, zap.New(core2))
	}); err != nil {
		t.Fatal(err)
	}
	if sets := logs2.FilterMessage("set sysctl").Len(); sets != 0 {
		t.Errorf("second run set %d sysctls", sets)
	}
}

// readRoot reads a sysctl as the test process sees it outside netns.Do:
// the root namespace's value (reading is allowed).
func readRoot(t *testing.T, name string) int {
	t.Helper()
	v, err := conntrack.ProcSysctl{}.Get(name)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	return v
}
