// Package health serves kube-proxy's HTTP endpoints:
//
//   - the proxy health server (--healthz-bind-address, /healthz and /livez),
//     answering like kube-proxy's ProxyHealthServer;
//   - one health-check node port listener per LoadBalancer Service with
//     externalTrafficPolicy: Local, answering like kube-proxy's
//     ServiceHealthServer;
//   - the mux for --metrics-bind-address (/metrics, /proxyMode, /healthz,
//     optional /debug/pprof and /configz).
//
// Sockets are opened through the Listener interface so unit tests run over
// in-memory connections (see the testing sub-package).
package health

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Listener opens listening sockets. It is the boundary between this package
// and the kernel.
type Listener interface {
	Listen(ctx context.Context, network, addr string) (net.Listener, error)
}

// StdListener opens real sockets with net.ListenConfig.
type StdListener struct{}

var _ Listener = StdListener{}

// Listen implements Listener.
func (StdListener) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, addr)
}

// readHeaderTimeout bounds how long a client may take to send its request
// headers, so a stuck load balancer probe cannot pin a goroutine forever.
// kube-proxy sets no timeout; probes send their headers at once.
const readHeaderTimeout = 30 * time.Second

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout}
}

// ListenAndServe opens addr through l and serves h until ctx is done. It is
// the helper for the metrics address: kube-proxy retries a failed listen
// every 5 s, and that policy is the caller's.
func ListenAndServe(ctx context.Context, l Listener, addr string, h http.Handler) error {
	if l == nil {
		l = StdListener{}
	}
	ln, err := l.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return serveUntilDone(ctx, newHTTPServer(h), ln)
}
