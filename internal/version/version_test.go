package version

import (
	"runtime"
	"strings"
	"testing"
)

// The tests read Version rather than assuming "dev", so they also pass in a
// build that sets it with -ldflags.
func TestString(t *testing.T) {
	if got, want := String(), "kpr "+Version; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestKubeProxyString(t *testing.T) {
	got := KubeProxyString()
	want := "kpr " + Version + " (compatible with kube-proxy v1.37)"
	if got != want {
		t.Fatalf("KubeProxyString() = %q, want %q", got, want)
	}
}

func TestRaw(t *testing.T) {
	got := Raw()
	for _, want := range []string{
		"version: " + Version + "\n",
		"kubeProxyCompat: v1.37\n",
		"goVersion: " + runtime.Version() + "\n",
		"platform: " + runtime.GOOS + "/" + runtime.GOARCH + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Raw() lacks %q; got:\n%s", want, got)
		}
	}
}
