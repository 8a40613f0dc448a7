package config

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// wantDefaults is kube-proxy v1.37's configuration with no flags and no
// file, written out by hand from kube-proxy's defaults (not computed by the
// code under test).
func wantDefaults() *Config {
	return &Config{
		Mode: ModeIPTables,
		ClientConnection: ClientConnection{
			ContentType: "application/vnd.kubernetes.protobuf",
			QPS:         5,
			Burst:       10,
		},
		BindAddress:        netip.MustParseAddr("0.0.0.0"),
		HealthzBindAddress: netip.MustParseAddrPort("0.0.0.0:10256"),
		MetricsBindAddress: netip.MustParseAddrPort("127.0.0.1:10249"),
		SyncPeriod:         30 * time.Second,
		MinSyncPeriod:      time.Second,
		ConfigSyncPeriod:   15 * time.Minute,
		IPTables: IPTables{
			MasqueradeBit:      14,
			LocalhostNodePorts: true,
			Backend:            IPTablesBackendAuto,
		},
		IPVS: IPVS{Scheduler: "rr"},
		Conntrack: Conntrack{
			MaxPerCore:            32768,
			Min:                   131072,
			TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout:   time.Hour,
		},
		DetectLocal: DetectLocal{Mode: LocalModeClusterCIDR},
		OOMScoreAdj: -999,
		Features:    Features{AllowServiceExternalIPs: true},
		LogFormat:   LogFormatJSON,
	}
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// sameConfig compares everything but Warnings, which tests check on their own.
func sameConfig(t *testing.T, got, want *Config) {
	t.Helper()
	g, w := *got, *want
	g.Warnings, w.Warnings = nil, nil
	if !reflect.DeepEqual(&g, &w) {
		t.Errorf("config mismatch\n got: %+v\nwant: %+v", g, w)
	}
}

func mustParse(t *testing.T, args ...string) *Config {
	t.Helper()
	c, err := Parse(args, io.Discard)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return c
}

// writeFile puts content into a fresh file and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fileWith is a minimal valid file plus the given YAML lines.
func fileWith(t *testing.T, yamlBody string) string {
	t.Helper()
	return writeFile(t, "config.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"+yamlBody)
}

func fieldErrors(err error) []*FieldError {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Errs
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	return nil
}

// wantFieldError checks that err reports field with a detail containing
// each of details.
func wantFieldError(t *testing.T, err error, field string, details ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one for %s", field)
	}
	for _, fe := range fieldErrors(err) {
		if fe.Field != field {
			continue
		}
		for _, d := range details {
			if !strings.Contains(fe.Error(), d) {
				t.Errorf("error for %s is %q, lacks %q", field, fe.Error(), d)
			}
		}
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error text %q does not name %s", err.Error(), field)
		}
		return
	}
	t.Fatalf("no error for field %s in:\n%v", field, err)
}

func findWarning(ws []Warning, field, contains string) bool {
	for _, w := range ws {
		if w.Field == field && strings.Contains(w.Message, contains) {
			return true
		}
	}
	return false
}

func wantWarning(t *testing.T, c *Config, field, contains string) {
	t.Helper()
	if !findWarning(c.Warnings, field, contains) {
		t.Errorf("no warning for %s containing %q; warnings: %v", field, contains, c.Warnings)
	}
}

func wantNoWarning(t *testing.T, c *Config, field string) {
	t.Helper()
	for _, w := range c.Warnings {
		if w.Field == field {
			t.Errorf("unexpected warning %v", w)
		}
	}
}
