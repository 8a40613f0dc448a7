// Package version holds kpr's build version and the kube-proxy release it mirrors.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is kpr's release version. Release builds set it with
//
//	-ldflags "-X github.com/kpr-proxy/kpr/internal/version.Version=v0.1.0"
//
// It is a variable (not a constant) only so the linker can set it; nothing
// in the program assigns to it.
var Version = "dev"

// KubeProxyCompat is the kube-proxy minor release whose flags, configuration
// file and behaviour kpr mirrors.
const KubeProxyCompat = "v1.37"

// String returns the short form used in logs and the User-Agent, e.g. "kpr v0.1.0".
func String() string {
	return "kpr " + Version
}

// KubeProxyString is what --version prints. kube-proxy prints
// "Kubernetes v1.37.x"; tools that scrape that line get a clear answer that
// this is not kube-proxy and which release it stands in for.
func KubeProxyString() string {
	return fmt.Sprintf("kpr %s (compatible with kube-proxy %s)", Version, KubeProxyCompat)
}

// Raw is what --version=raw prints: like kube-proxy's raw output, a
// multi-line dump of build details for bug reports.
func Raw() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: %s\n", Version)
	fmt.Fprintf(&b, "kubeProxyCompat: %s\n", KubeProxyCompat)
	fmt.Fprintf(&b, "goVersion: %s\n", runtime.Version())
	fmt.Fprintf(&b, "platform: %s/%s\n", runtime.GOOS, runtime.GOARCH)
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				fmt.Fprintf(&b, "gitCommit: %s\n", s.Value)
			case "vcs.time":
				fmt.Fprintf(&b, "buildDate: %s\n", s.Value)
			case "vcs.modified":
				fmt.Fprintf(&b, "gitTreeModified: %s\n", s.Value)
			}
		}
	}
	return b.String()
}
