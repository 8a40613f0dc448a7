package framework

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The control plane runs in the "cp" namespace: etcd on its loopback,
// kube-apiserver on APIServerIPv4:6443, kube-controller-manager with only the
// controllers a proxy's world needs.

func (c *Cluster) startControlPlane(ctx context.Context) error {
	ips := []net.IP{
		APIServerIPv4.AsSlice(), APIServerIPv6.AsSlice(), net.ParseIP("127.0.0.1"),
		// The "kubernetes" Service's ClusterIPs (first address of each range).
		ServiceCIDRV4.Addr().Next().AsSlice(), ServiceCIDRV6.Addr().Next().AsSlice(),
	}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}
	p, err := makePKI(filepath.Join(c.RunDir, "pki"), ips, dns)
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	c.pki = p

	// etcd: single member on the cp namespace's loopback. fsync is off: the
	// data lives as long as the test does.
	etcdDir := filepath.Join(c.RunDir, "etcd-data")
	c.etcd, err = c.startProcess(ProcessSpec{Name: "etcd", NS: c.cp, Argv: []string{
		c.bins["etcd"],
		"--name=e2e",
		"--data-dir=" + etcdDir,
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=e2e=http://127.0.0.1:2380",
		"--unsafe-no-fsync",
		"--log-level=warn",
	}})
	if err != nil {
		return err
	}
	if err := c.waitProcess(ctx, c.etcd, 60*time.Second, "etcd /health", c.etcdHealthy); err != nil {
		return err
	}

	args := []string{
		c.bins["kube-apiserver"],
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--advertise-address=" + APIServerIPv4.String(),
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CAFile,
		"--token-auth-file=" + p.TokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPub,
		"--service-account-signing-key-file=" + p.SAKey,
		"--service-cluster-ip-range=" + ServiceCIDRFlag(),
		"--cert-dir=" + filepath.Join(c.RunDir, "apiserver-certs"),
		// Fewer moving parts on a 2-core machine.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, c.opts.APIServerArgs...)
	c.apiserver, err = c.startProcess(ProcessSpec{Name: "kube-apiserver", NS: c.cp, Argv: args})
	if err != nil {
		return err
	}

	c.RESTConfig = c.restConfig(p.AdminToken)
	c.Client, err = kubernetes.NewForConfig(c.RESTConfig)
	if err != nil {
		return err
	}
	if err := c.waitProcess(ctx, c.apiserver, 120*time.Second, "kube-apiserver /readyz", func(ctx context.Context) error {
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, firstLine(string(body)))
		}
		return nil
	}); err != nil {
		return err
	}

	c.AdminKubeconfig = filepath.Join(c.RunDir, "admin.kubeconfig")
	if err := writeKubeconfig(c.AdminKubeconfig, p.CAPEM, p.AdminToken, "kpr-e2e-admin"); err != nil {
		return err
	}
	return nil
}

// startControllerManager runs kube-controller-manager with the EndpointSlice
// controllers (so EndpointSlices come from Pods as in a real cluster) and the
// ServiceAccount controller (Pod admission needs each namespace's "default"
// ServiceAccount). Nothing else: no node lifecycle, so harness-made Nodes stay
// as the harness sets them.
func (c *Cluster) startControllerManager(ctx context.Context) error {
	kc := filepath.Join(c.RunDir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(kc, c.pki.CAPEM, c.pki.ControllerMT, "system:kube-controller-manager"); err != nil {
		return err
	}
	args := []string{
		c.bins["kube-controller-manager"],
		"--kubeconfig=" + kc,
		"--controllers=endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller",
		"--leader-elect=false",
		// Each controller gets its own ServiceAccount and the bootstrap RBAC
		// role for it, as in a real cluster.
		"--use-service-account-credentials=true",
		// Its HTTPS endpoint only serves metrics and healthz, which the
		// harness does not use.
		"--secure-port=0",
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--v=1",
	}
	args = append(args, c.opts.ControllerManagerArgs...)
	var err error
	c.kcm, err = c.startProcess(ProcessSpec{Name: "kube-controller-manager", NS: c.cp, Argv: args})
	if err != nil {
		return err
	}
	return c.waitProcess(ctx, c.kcm, 60*time.Second, "ServiceAccount default/default (made by kube-controller-manager)", func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// restConfig is a client config for the harness itself. The harness runs in
// the root namespace, which has no route to the apiserver (by design), so
// every connection is dialed from inside the control-plane namespace.
func (c *Cluster) restConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            APIServerURL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.CAPEM},
		Dial:            c.cp.DialContext,
		QPS:             200,
		Burst:           400,
		UserAgent:       "kpr-e2e-harness",
	}
}

// RESTConfigForToken returns a harness-side client config authenticating
// with token (for checking what a ServiceAccount may do).
func (c *Cluster) RESTConfigForToken(token string) *rest.Config { return c.restConfig(token) }

func (c *Cluster) etcdHealthy(ctx context.Context) error {
	tr := &http.Transport{DialContext: c.cp.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:2379/health", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("etcd health: %s %s", resp.Status, body)
	}
	return nil
}

// waitProcess polls cond until it succeeds, the timeout passes, or the
// process exits (then the error carries its log tail).
func (c *Cluster) waitProcess(ctx context.Context, p *Process, timeout time.Duration, what string, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	exited, exitErr := p.Exited()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = cond(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited (%v) while waiting for %s; last lines of %s:\n%s", p.Name, exitErr(), what, p.LogPath, p.Tail(40))
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s waiting for %s: %v; last lines of %s:\n%s", timeout, what, last, p.LogPath, p.Tail(40))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeKubeconfig writes a kubeconfig for APIServerURL with a bearer token.
// It is meant for processes inside node namespaces (which reach the apiserver
// directly).
func writeKubeconfig(path string, caPEM []byte, token, user string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: APIServerURL(), CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// ensureNamespace creates a namespace if it does not exist.
func (c *Cluster) ensureNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}
