package framework

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// Ports the echo server of every pod listens on, declared as named container
// ports so Services can use named targetPorts.
const (
	EchoTCPPort  = 8080 // container port "tcp"
	EchoUDPPort  = 8080 // container port "udp"
	EchoHTTPPort = 8081 // container port "http"
)

// PodSpec describes a pod for CreatePod.
type PodSpec struct {
	// Name is required; Namespace defaults to "default" (created if
	// missing).
	Name, Namespace string
	// Node is the 0-based index of the node to run on.
	Node int
	// Labels go on the Pod (Services select on them).
	Labels map[string]string
	// NotReady leaves the pod Running but not Ready (use SetReady later).
	NotReady bool
	// Mutate, if set, edits the Pod object before it is created.
	Mutate func(*corev1.Pod)
}

// Pod is an API Pod whose "containers" are an echo server in a network
// namespace wired by the CNI plugin on its node. The harness plays kubelet:
// it writes the Pod's status and completes deletions.
type Pod struct {
	*NetNS
	Name, Namespace string
	UID             string
	Node            *Node
	// IPs are the pod's addresses as CNI returned them (IPv4 first).
	IPs []netip.Addr
	// Echo is the echo server process.
	Echo *Process

	c         *Cluster
	rt        *libcni.RuntimeConf
	mu        sync.Mutex
	torndown  bool
	readyFile string
}

// IPv4 returns the pod's IPv4 address (invalid if it has none).
func (p *Pod) IPv4() netip.Addr { return p.IP(false) }

// IPv6 returns the pod's IPv6 address (invalid if it has none).
func (p *Pod) IPv6() netip.Addr { return p.IP(true) }

// IP returns the pod's IPv6 (v6) or IPv4 address (invalid if it has none).
func (p *Pod) IP(v6 bool) netip.Addr {
	for _, a := range p.IPs {
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

var unsafeName = regexp.MustCompile(`[^a-z0-9-]`)

// podNSRole makes a namespace role from the pod's identity, short and
// filesystem-safe.
func podNSRole(namespace, name string) string {
	role := "pod-" + unsafeName.ReplaceAllString(namespace+"-"+name, "-")
	if len(role) > 40 {
		sum := sha256.Sum256([]byte(namespace + "/" + name))
		role = role[:28] + "-" + hex.EncodeToString(sum[:])[:10]
	}
	return role
}

// CreatePod creates the Pod object, its network namespace (via CNI on the
// node), starts its echo server and marks it Running and Ready. The pod is
// removed when the test ends (t.Cleanup) or by Delete/Finish.
func (c *Cluster) CreatePod(t testing.TB, spec PodSpec) *Pod {
	t.Helper()
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	p, err := c.createPod(context.Background(), spec)
	if err != nil {
		t.Fatalf("CreatePod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	t.Cleanup(func() {
		if err := p.finish(context.Background()); err != nil {
			t.Logf("cleanup of pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	})
	return p
}

func (c *Cluster) createPod(ctx context.Context, spec PodSpec) (_ *Pod, err error) {
	created, node, err := c.createPodObject(ctx, &spec)
	if err != nil {
		return nil, err
	}
	key := spec.Namespace + "/" + spec.Name
	p := &Pod{Name: spec.Name, Namespace: spec.Namespace, UID: string(created.UID), Node: node, c: c}
	c.mu.Lock()
	c.pods[key] = p
	c.mu.Unlock()
	defer func() {
		if err != nil {
			_ = p.finish(context.Background())
		}
	}()

	if p.NetNS, err = c.newNS(podNSRole(spec.Namespace, spec.Name)); err != nil {
		return nil, err
	}
	p.rt = &libcni.RuntimeConf{
		ContainerID: p.UID,
		NetNS:       p.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", spec.Namespace},
			{"K8S_POD_NAME", spec.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.UID},
			{"K8S_POD_UID", p.UID},
		},
	}
	// On a failed ADD the deferred finish still runs DEL, as a runtime does,
	// so the plugin can release whatever it allocated.
	if p.IPs, err = c.cniAdd(ctx, node, p.rt); err != nil {
		return nil, err
	}
	ipv4First(p.IPs)

	p.readyFile = filepath.Join(c.RunDir, "pods", podNSRole(spec.Namespace, spec.Name)+".ready")
	_ = os.MkdirAll(filepath.Dir(p.readyFile), 0o755)
	_ = os.Remove(p.readyFile)
	p.Echo, err = c.startProcess(ProcessSpec{
		Name: "pod-" + spec.Namespace + "-" + spec.Name,
		NS:   p.NetNS,
		Argv: []string{c.bins["echo"], "serve", "--name=" + spec.Name,
			fmt.Sprintf("--tcp=:%d", EchoTCPPort), fmt.Sprintf("--udp=:%d", EchoUDPPort),
			fmt.Sprintf("--http=:%d", EchoHTTPPort), "--ready-file=" + p.readyFile},
	})
	if err != nil {
		return nil, err
	}
	if err := c.waitProcess(ctx, p.Echo, 10*time.Second, "echo server listening", func(context.Context) error {
		if _, err := os.Stat(p.readyFile); err != nil {
			return err
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.writeStatus(ctx, !spec.NotReady); err != nil {
		return nil, err
	}
	c.Log.Info("pod running", zap.String("pod", key), zap.String("node", node.Name), zap.Any("ips", p.IPs), zap.Bool("ready", !spec.NotReady))
	return p, nil
}

// createPodObject checks spec (defaulting its namespace), makes sure its
// namespace can take pods, and creates the Pod API object bound to its node:
// what a pod needs whether the harness runs it in a network namespace here
// or in the VM.
func (c *Cluster) createPodObject(ctx context.Context, spec *PodSpec) (*corev1.Pod, *Node, error) {
	if spec.Name == "" {
		return nil, nil, fmt.Errorf("PodSpec.Name is required")
	}
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	if spec.Node < 0 || spec.Node >= len(c.nodes) {
		return nil, nil, fmt.Errorf("PodSpec.Node=%d, cluster has %d nodes (0-based)", spec.Node, len(c.nodes))
	}
	key := spec.Namespace + "/" + spec.Name
	c.mu.Lock()
	_, dup := c.pods[key]
	c.mu.Unlock()
	if dup {
		return nil, nil, fmt.Errorf("pod %s already exists in the harness", key)
	}
	node := c.nodes[spec.Node]
	if err := c.ensureNamespace(ctx, spec.Namespace); err != nil {
		return nil, nil, err
	}
	if c.opts.NoControllerManager {
		// Pod admission wants the namespace's "default" ServiceAccount,
		// which the (absent) ServiceAccount controller would make.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: spec.Namespace}}
		if _, err := c.Client.CoreV1().ServiceAccounts(spec.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, nil, err
		}
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      node.Name,
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](30),
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: "kpr-e2e/echo:harness",
				Ports: []corev1.ContainerPort{
					{Name: "tcp", ContainerPort: EchoTCPPort, Protocol: corev1.ProtocolTCP},
					{Name: "udp", ContainerPort: EchoUDPPort, Protocol: corev1.ProtocolUDP},
					{Name: "http", ContainerPort: EchoHTTPPort, Protocol: corev1.ProtocolTCP},
				},
			}},
		},
	}
	if spec.Mutate != nil {
		spec.Mutate(obj)
	}
	created, err := c.Client.CoreV1().Pods(spec.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("creating Pod: %w", err)
	}
	return created, node, nil
}

// ipv4First orders a dual-stack pod's addresses IPv4 first, as Pod.IPs
// promises.
func ipv4First(ips []netip.Addr) {
	if len(ips) > 1 && ips[0].Is6() {
		ips[0], ips[1] = ips[1], ips[0]
	}
}

// writeStatus sets the status a kubelet reports for a running pod.
func (p *Pod) writeStatus(ctx context.Context, ready bool) error {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := p.c.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.NewTime(time.Now())
		startedAt := now
		if pod.Status.StartTime != nil {
			startedAt = *pod.Status.StartTime
		}
		podIPs := make([]corev1.PodIP, 0, len(p.IPs))
		for _, a := range p.IPs {
			podIPs = append(podIPs, corev1.PodIP{IP: a.String()})
		}
		setCond := func(t corev1.PodConditionType, s corev1.ConditionStatus) corev1.PodCondition {
			for _, c := range pod.Status.Conditions {
				if c.Type == t && c.Status == s {
					return c // keep the transition time
				}
			}
			return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
		}
		pod.Status = corev1.PodStatus{
			Phase:     corev1.PodRunning,
			HostIP:    p.Node.IPv4.String(),
			HostIPs:   []corev1.HostIP{{IP: p.Node.IPv4.String()}, {IP: p.Node.IPv6.String()}},
			PodIP:     podIPs[0].IP,
			PodIPs:    podIPs,
			StartTime: &startedAt,
			Conditions: []corev1.PodCondition{
				setCond(corev1.PodScheduled, corev1.ConditionTrue),
				setCond(corev1.PodInitialized, corev1.ConditionTrue),
				setCond(corev1.ContainersReady, cond),
				setCond(corev1.PodReady, cond),
			},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: "echo", Image: "kpr-e2e/echo:harness", ImageID: "kpr-e2e/echo@harness",
				ContainerID: "e2e://" + p.UID, Ready: ready, Started: ptr.To(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}},
			}},
		}
		_, err = p.c.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
}

// SetReady flips the pod's Ready condition, as a kubelet does when a
// readiness probe starts or stops passing. The echo server keeps running.
func (p *Pod) SetReady(t testing.TB, ready bool) {
	t.Helper()
	if err := p.writeStatus(context.Background(), ready); err != nil {
		t.Fatalf("SetReady(%s/%s, %v): %v", p.Namespace, p.Name, ready, err)
	}
}

// Terminate starts a graceful deletion: the Pod gets a deletionTimestamp
// (so its endpoints become terminating) while its namespace and echo server
// stay up, as during a real termination grace period. Call Finish to
// complete it; until then the Pod object stays.
func (p *Pod) Terminate(t testing.TB, grace time.Duration) {
	t.Helper()
	secs := int64(grace / time.Second)
	if secs < 1 {
		secs = 1 // 0 would delete at once; use Delete for that
	}
	err := p.c.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &secs})
	if err != nil {
		t.Fatalf("Terminate(%s/%s): %v", p.Namespace, p.Name, err)
	}
}

// Finish completes a pod's life as a kubelet does: stops the echo server,
// CNI DEL, removes the namespace, then deletes the Pod object for good.
func (p *Pod) Finish(t testing.TB) {
	t.Helper()
	if err := p.finish(context.Background()); err != nil {
		t.Fatalf("Finish(%s/%s): %v", p.Namespace, p.Name, err)
	}
}

// Delete removes the pod at once (grace period 0).
func (p *Pod) Delete(t testing.TB) { t.Helper(); p.Finish(t) }

func (p *Pod) finish(ctx context.Context) error {
	if err := p.teardownLocal(); err != nil {
		return err
	}
	err := p.c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting Pod object: %w", err)
	}
	return nil
}

// teardownLocal stops the pod's processes, detaches it from the network and
// removes its namespace. Idempotent.
func (p *Pod) teardownLocal() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.torndown {
		return nil
	}
	p.torndown = true
	var firstErr error
	if p.Echo != nil {
		if err := p.Echo.Stop(2 * time.Second); err != nil {
			firstErr = err
		}
	}
	if p.rt != nil && p.NetNS != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := p.c.cniDel(ctx, p.Node, p.rt); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("CNI DEL: %w", err)
		}
		cancel()
	}
	if p.NetNS != nil {
		p.NetNS.destroy()
	}
	p.c.mu.Lock()
	delete(p.c.pods, p.Namespace+"/"+p.Name)
	p.c.mu.Unlock()
	return firstErr
}

// Pod returns the harness pod namespace/name, or nil.
func (c *Cluster) Pod(namespace, name string) *Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pods[namespace+"/"+name]
}
