package ctcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/watch"
)

// Where Service data comes from (--source).
const (
	SourceAuto  = "auto"
	SourceProxy = "proxy"
	SourceAPI   = "api"
)

// DefaultProxyURL is the proxy's default --metrics-bind-address, where it
// serves /debug/kpr/snapshot.
const DefaultProxyURL = "http://127.0.0.1:10249"

// snapshotPath is the proxy's debug view of what it programmed
// (internal/app/debug.go).
const snapshotPath = "/debug/kpr/snapshot"

// maxSnapshotBytes bounds what we read from the debug endpoint (a 10k
// Service × 10 endpoint cluster is about 10 MB).
const maxSnapshotBytes = 256 << 20

// errNoKubeconfig: no kubeconfig anywhere and not running in a cluster.
var errNoKubeconfig = errors.New("no kubeconfig found (tried --kubeconfig, $KUBECONFIG, ~/.kube/config and the in-cluster service account)")

// source loads the View. Load may be called again to refresh (watch).
type source interface {
	Load(ctx context.Context) (*View, error)
	Close()
}

// proxySource reads the running proxy's debug endpoint.
type proxySource struct {
	url    string // base URL, no trailing slash
	client *http.Client
}

// normalizeProxyURL accepts "host:port" as well as a URL.
func normalizeProxyURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("--proxy-url is empty")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
		return "", fmt.Errorf("--proxy-url %q: want an http:// or https:// URL", s)
	}
	return strings.TrimRight(s, "/"), nil
}

func (s *proxySource) Load(ctx context.Context) (*View, error) {
	u := s.url + snapshotPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("proxy debug endpoint %s: %w", u, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("proxy debug endpoint %s is unreachable: %w", u, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, fmt.Errorf("proxy debug endpoint %s answered %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	var sv app.SnapshotView
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxSnapshotBytes))
	if err := dec.Decode(&sv); err != nil {
		return nil, fmt.Errorf("proxy debug endpoint %s: bad snapshot JSON: %w", u, err)
	}
	v, err := ViewFromSnapshotView(&sv, "proxy "+s.url)
	if err != nil {
		return nil, fmt.Errorf("proxy debug endpoint %s: %w", u, err)
	}
	return v, nil
}

func (s *proxySource) Close() {}

// unwrapURLError drops the "Get \"url\": " prefix we already say.
func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// KubeClientFunc builds an API client from a kubeconfig path ("" for the
// usual places) and returns the apiserver's address for messages. It
// returns an error wrapping errNoKubeconfig when there is no configuration
// at all.
type KubeClientFunc func(kubeconfig string) (kubernetes.Interface, string, error)

// DefaultKubeClient loads the kubeconfig as kubectl does: --kubeconfig,
// else $KUBECONFIG, else ~/.kube/config, else the in-cluster service
// account.
func DefaultKubeClient(kubeconfig string) (kubernetes.Interface, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, "", errNoKubeconfig
		}
		return nil, "", fmt.Errorf("loading kubeconfig: %w", err)
	}
	rc.UserAgent = "kpr-conntrack"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, "", fmt.Errorf("building API client: %w", err)
	}
	return cs, rc.Host, nil
}

// apiSource watches Services, EndpointSlices and the Node through the
// proxy's own conversion (internal/watch), so the View is exactly what a
// proxy on this node would program, in both families.
type apiSource struct {
	kubeconfig string
	node       string
	newClient  KubeClientFunc
	log        *zap.Logger
	// runCtx bounds the informers' lifetime (the command's context).
	runCtx context.Context

	mu     sync.Mutex
	w      *watch.Watcher
	host   string
	cancel context.CancelFunc
}

func (s *apiSource) start(ctx context.Context) error {
	client, host, err := s.newClient(s.kubeconfig)
	if err != nil {
		return err
	}
	if host == "" {
		host = "(unknown address)"
	}
	// The informers retry forever on errors, silently; ask once first so
	// that a missing permission or an unreachable apiserver is an error.
	checks := []struct {
		what string
		list func() error
	}{
		{"services", func() error {
			_, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{Limit: 1})
			return err
		}},
		{"endpointslices", func() error {
			_, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{Limit: 1})
			return err
		}},
		{"nodes", func() error {
			_, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{
				Limit: 1, FieldSelector: fields.OneTermEqualSelector("metadata.name", s.node).String()})
			return err
		}},
	}
	for _, c := range checks {
		if err := c.list(); err != nil {
			hint := ""
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
				hint = " (the CLI needs list and watch on services, endpointslices.discovery.k8s.io and nodes)"
			}
			return fmt.Errorf("apiserver %s: cannot list %s: %w%s", host, c.what, err, hint)
		}
	}
	w, err := watch.New(watch.Config{
		Client:   client,
		NodeName: s.node,
		Families: []model.Family{model.IPv4, model.IPv6},
		Logger:   s.log,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(s.runCtx)
	w.Start(runCtx)
	if err := w.WaitForSync(ctx); err != nil {
		cancel()
		w.Wait()
		return fmt.Errorf("apiserver %s: %w", host, err)
	}
	s.w, s.host, s.cancel = w, host, cancel
	return nil
}

func (s *apiSource) Load(ctx context.Context) (*View, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		if err := s.start(ctx); err != nil {
			return nil, err
		}
	}
	st := s.w.Snapshot()
	v := &View{Source: "apiserver " + s.host, Node: s.node}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		fs := st.Family(fam)
		if fs == nil || len(fs.Snapshot.Services) == 0 {
			continue
		}
		node := fs.Node
		if node == nil {
			node = &model.Node{Name: s.node}
		}
		v.Families = append(v.Families, FamilyView{Snapshot: fs.Snapshot, Node: node})
	}
	return v, nil
}

func (s *apiSource) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
		s.w.Wait()
		s.cancel = nil
	}
}

// autoSource uses the proxy if it answers, else the apiserver; once one
// worked it sticks to it.
type autoSource struct {
	proxy  *proxySource
	api    *apiSource
	stderr io.Writer
	chosen source
}

func (s *autoSource) Load(ctx context.Context) (*View, error) {
	if s.chosen != nil {
		return s.chosen.Load(ctx)
	}
	v, perr := s.proxy.Load(ctx)
	if perr == nil {
		s.chosen = s.proxy
		return v, nil
	}
	v, aerr := s.api.Load(ctx)
	if aerr != nil {
		return nil, &noSourceError{proxy: perr, api: aerr}
	}
	fmt.Fprintf(s.stderr, "note: %v; using %s\n", perr, v.Source)
	s.chosen = s.api
	return v, nil
}

func (s *autoSource) Close() { s.api.Close() }

// noSourceError: --source auto tried both and both failed.
type noSourceError struct{ proxy, api error }

func (e *noSourceError) Error() string {
	return fmt.Sprintf("no Service data: tried the running proxy and the apiserver:\n  proxy: %v\n  apiserver: %v", e.proxy, e.api)
}
