package conntrack_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	cttesting "github.com/kpr-proxy/kpr/internal/conntrack/testing"
)

func TestConntrackMax(t *testing.T) {
	cases := []struct {
		perCore, min int32
		cpus, want   int
	}{
		{0, 131072, 8, 0},             // maxPerCore 0: leave alone
		{32768, 131072, 2, 131072},    // floor wins
		{32768, 131072, 8, 262144},    // scaled wins
		{32768, 0, 1, 32768},          // no floor
		{32768, 131072, 64, 1 << 20},  // capped at 1Mi
		{32768, 2 << 20, 64, 1 << 20}, // cap beats even a larger floor (as kube-proxy)
		{32768, 0, 0, 32768},          // nonsense CPU count counts as 1
	}
	for _, c := range cases {
		got := conntrack.ConntrackMax(conntrack.SysctlConfig{MaxPerCore: c.perCore, Min: c.min}, c.cpus)
		if got != c.want {
			t.Errorf("ConntrackMax(%d, %d, %d cpus) = %d, want %d", c.perCore, c.min, c.cpus, got, c.want)
		}
	}
}

func allSysctls(max int) map[string]int {
	return map[string]int{
		conntrack.SysctlMax:              max,
		conntrack.SysctlTCPEstablished:   432000,
		conntrack.SysctlTCPCloseWait:     60,
		conntrack.SysctlTCPBeLiberal:     0,
		conntrack.SysctlUDPTimeout:       30,
		conntrack.SysctlUDPStreamTimeout: 120,
	}
}

func TestApplySysctls(t *testing.T) {
	full := conntrack.SysctlConfig{
		MaxPerCore: 32768, Min: 131072,
		TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour,
		TCPBeLiberal: true, UDPTimeout: 60 * time.Second, UDPStreamTimeout: 5 * time.Minute,
	}
	cases := []struct {
		name       string
		cfg        conntrack.SysctlConfig
		setup      func(*cttesting.FakeSysctl)
		wantWrites []string
		wantSkips  int // info logs starting with "not "
	}{
		{
			name: "everything, initial namespace",
			cfg:  full,
			setup: func(s *cttesting.FakeSysctl) {
				s.HashsizeValue = 16384
			},
			wantWrites: []string{
				"net/netfilter/nf_conntrack_max=262144", "hashsize=65536",
				"net/netfilter/nf_conntrack_tcp_timeout_established=86400",
				"net/netfilter/nf_conntrack_tcp_timeout_close_wait=3600",
				"net/netfilter/nf_conntrack_udp_timeout=60",
				"net/netfilter/nf_conntrack_udp_timeout_stream=300",
				"net/netfilter/nf_conntrack_tcp_be_liberal=1",
			},
		},
		{
			name:       "zero config changes nothing",
			cfg:        conntrack.SysctlConfig{},
			wantWrites: nil,
		},
		{
			name: "max never lowered; hashsize still raised",
			cfg:  conntrack.SysctlConfig{MaxPerCore: 32768, Min: 131072},
			setup: func(s *cttesting.FakeSysctl) {
				s.Values[conntrack.SysctlMax] = 1 << 20
				s.HashsizeValue = 1024
			},
			wantWrites: []string{"hashsize=65536"},
		},
		{
			name: "values already right: no writes",
			cfg:  conntrack.SysctlConfig{UDPTimeout: 30 * time.Second, TCPCloseWaitTimeout: time.Minute},
		},
		{
			name: "node namespace: nf_conntrack_max read-only, hashsize left alone, rest set",
			cfg:  full,
			setup: func(s *cttesting.FakeSysctl) {
				s.ReadOnly[conntrack.SysctlMax] = true
				s.HashsizeValue = 1024
			},
			wantWrites: []string{
				"net/netfilter/nf_conntrack_tcp_timeout_established=86400",
				"net/netfilter/nf_conntrack_tcp_timeout_close_wait=3600",
				"net/netfilter/nf_conntrack_udp_timeout=60",
				"net/netfilter/nf_conntrack_udp_timeout_stream=300",
				"net/netfilter/nf_conntrack_tcp_be_liberal=1",
			},
			wantSkips: 1,
		},
		{
			name: "sub-second timeout rounds up, not to 0",
			cfg:  conntrack.SysctlConfig{UDPTimeout: 1500 * time.Millisecond},
			wantWrites: []string{
				"net/netfilter/nf_conntrack_udp_timeout=2",
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := cttesting.NewFakeSysctl(8, allSysctls(65536))
			s.HashsizeValue = 1 << 20
			if c.setup != nil {
				c.setup(s)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			err := conntrack.ApplySysctls(c.cfg, s, zap.New(core))
			if err != nil {
				t.Fatalf("ApplySysctls: %v", err)
			}
			if !reflect.DeepEqual(s.Writes, c.wantWrites) {
				t.Errorf("writes:\n got %q\nwant %q", s.Writes, c.wantWrites)
			}
			skips := 0
			for _, e := range logs.All() {
				if strings.HasPrefix(e.Message, "not ") {
					skips++
					if e.Level != zapcore.InfoLevel || e.ContextMap()["sysctl"] == nil {
						t.Errorf("skip log %q level %v fields %v", e.Message, e.Level, e.ContextMap())
					}
				}
			}
			if skips != c.wantSkips {
				t.Errorf("skip logs = %d, want %d: %v", skips, c.wantSkips, logs.All())
			}
		})
	}
}

func TestApplySysctlsSkipsWhatIsNotThere(t *testing.T) {
	s := cttesting.NewFakeSysctl(2, allSysctls(65536))
	delete(s.Values, conntrack.SysctlUDPStreamTimeout)
	delete(s.Values, conntrack.SysctlTCPBeLiberal)
	s.HashsizeErr = &fs.PathError{Op: "open", Path: "hashsize", Err: fs.ErrPermission}
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := conntrack.SysctlConfig{MaxPerCore: 32768, Min: 131072, TCPBeLiberal: true, UDPStreamTimeout: time.Minute, UDPTimeout: time.Minute}
	if err := conntrack.ApplySysctls(cfg, s, zap.New(core)); err != nil {
		t.Fatalf("missing/forbidden settings must be skipped, got %v", err)
	}
	want := []string{"net/netfilter/nf_conntrack_max=131072", "net/netfilter/nf_conntrack_udp_timeout=60"}
	if !reflect.DeepEqual(s.Writes, want) {
		t.Errorf("writes %q, want %q", s.Writes, want)
	}
	if n := len(logs.FilterMessageSnippet("not ").All()); n != 3 {
		t.Errorf("skip logs = %d, want 3 (hashsize, stream timeout, be_liberal): %v", n, logs.All())
	}
}

func TestApplySysctlsRealErrorsReported(t *testing.T) {
	s := cttesting.NewFakeSysctl(2, allSysctls(65536))
	// An I/O error that is not "not permitted here" is a fault: returned.
	s.HashsizeErr = &fs.PathError{Op: "read", Path: "hashsize", Err: errors.New("input/output error")}
	err := conntrack.ApplySysctls(conntrack.SysctlConfig{MaxPerCore: 32768}, s, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "hashsize") {
		t.Fatalf("want a hashsize error, got %v", err)
	}
}

func TestApplySysctlsBadInput(t *testing.T) {
	s := cttesting.NewFakeSysctl(2, allSysctls(65536))
	for _, cfg := range []conntrack.SysctlConfig{{MaxPerCore: -1}, {Min: -1}, {UDPTimeout: -time.Second}} {
		if err := conntrack.ApplySysctls(cfg, s, zap.NewNop()); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if err := conntrack.ApplySysctls(conntrack.SysctlConfig{}, s, nil); err == nil {
		t.Error("nil logger accepted")
	}
	if len(s.Writes) != 0 {
		t.Errorf("bad input wrote %v", s.Writes)
	}
}

// ProcSysctl against a fake /proc/sys tree (the kernel variant runs in a
// network namespace in sysctl_kernel_test.go).
func TestProcSysctlFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "net", "netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_udp_timeout"), []byte("30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_max"), []byte("junk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hs := filepath.Join(root, "hashsize")
	if err := os.WriteFile(hs, []byte("4096\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := conntrack.ProcSysctl{ProcSysRoot: root, HashsizePath: hs}
	if v, err := p.Get(conntrack.SysctlUDPTimeout); err != nil || v != 30 {
		t.Fatalf("Get = %d, %v", v, err)
	}
	if err := p.Set("net.netfilter.nf_conntrack_udp_timeout", 45); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.Get(conntrack.SysctlUDPTimeout); v != 45 {
		t.Fatalf("after Set: %d", v)
	}
	if _, err := p.Get(conntrack.SysctlMax); err == nil {
		t.Error("non-integer content accepted")
	}
	if err := p.Set(conntrack.SysctlUDPStreamTimeout, 1); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set of a missing sysctl: %v, want ErrNotExist (and no file created)", err)
	}
	for _, bad := range []string{"", "/etc/passwd", "../etc/passwd", "net/../../x"} {
		if _, err := p.Get(bad); err == nil {
			t.Errorf("Get(%q) accepted", bad)
		}
		if err := p.Set(bad, 1); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if !p.Writable(conntrack.SysctlUDPTimeout) || p.Writable(conntrack.SysctlUDPStreamTimeout) {
		t.Error("Writable")
	}
	if v, err := p.Hashsize(); err != nil || v != 4096 {
		t.Fatalf("Hashsize = %d, %v", v, err)
	}
	if err := p.SetHashsize(8192); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.Hashsize(); v != 8192 {
		t.Fatalf("after SetHashsize: %d", v)
	}
	if p.NumCPU() < 1 {
		t.Error("NumCPU < 1")
	}
}
