package bench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The workload: N Services in Namespace, each a selector-less ClusterIP
// Service with one TCP port and a hand-made EndpointSlice. Most are dummies
// (svc-00000, …) whose endpoints are addresses from GUIDE.md's scale-bench
// ranges that never see traffic. A few point at a real echo server:
// EchoService, whose endpoint the one-change measurement switches between
// two echo pods, and the probe Services (probe-00, …), which first-packet
// connects go to as well. Upstream kube-proxy writes its KUBE-SERVICES chain
// in Go map order, different at every sync, so where one Service's rule sits
// in that linear chain (and so how long its first packet takes) is luck;
// spreading connects over several Services averages that out.
const (
	Namespace   = "bench"
	EchoService = "echo"
	// ManagedBy marks the bench's EndpointSlices as not the controller's.
	ManagedBy = "bench.kpr-proxy.github.io"
	// ServicePort is every Service's port; TargetPort the endpoints' port
	// (the echo server's TCP port).
	ServicePort = 80
	TargetPort  = 8080
	PortName    = "p"
)

// EchoClusterIP is the echo Service's ClusterIP.
var EchoClusterIP = netip.MustParseAddr("198.19.192.10")

// serviceBase is the first dummy Service's ClusterIP: 198.19.193.0, so the
// first 256 addresses stay for the kubernetes Service (.1) and the echo one.
var serviceBase = netip.MustParseAddr("198.19.193.0")

// ProbeServiceName is probe Service j's name, ProbeClusterIP its ClusterIP
// (198.19.192.16 + j, j < MaxProbeServices).
func ProbeServiceName(j int) string { return fmt.Sprintf("probe-%02d", j) }
func ProbeClusterIP(j int) netip.Addr {
	return addAddr(netip.MustParseAddr("198.19.192.16"), uint32(j))
}

// MaxProbeServices keeps probe ClusterIPs inside 198.19.192.0/24.
const MaxProbeServices = 200

// DummyServiceName is dummy Service i's name.
func DummyServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// DummyClusterIP is dummy Service i's ClusterIP (i < MaxServices).
func DummyClusterIP(i int) netip.Addr { return addAddr(serviceBase, uint32(i)) }

func addAddr(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// The dummy endpoint pool: 198.18.16.0–198.18.255.255 (the /16's first 16
// /24s hold the nodes' real pod CIDRs, 198.18.<node>.0/24, and stay out) and
// 198.19.0.0/17, hosts .1–.254 of each /24. 100k endpoints (10k × 10) wrap
// around it once: addresses then repeat across Services (never within one),
// as pods backing several Services do.
const (
	poolFirstBlocks = 256 - 16 // 198.18.16.0/24 … 198.18.255.0/24
	poolSecondBlock = 128      // 198.19.0.0/24 … 198.19.127.0/24
	hostsPerBlock   = 254
	dummyPoolSize   = (poolFirstBlocks + poolSecondBlock) * hostsPerBlock
)

// DummyEndpoint is the k-th address of the dummy pool (k wraps around).
func DummyEndpoint(k int) netip.Addr {
	k %= dummyPoolSize
	block, host := k/hostsPerBlock, k%hostsPerBlock+1
	if block < poolFirstBlocks {
		return netip.AddrFrom4([4]byte{198, 18, byte(16 + block), byte(host)})
	}
	return netip.AddrFrom4([4]byte{198, 19, byte(block - poolFirstBlocks), byte(host)})
}

// DummyEndpoints are dummy Service i's endpoint addresses.
func DummyEndpoints(i, perService int) []netip.Addr {
	out := make([]netip.Addr, perService)
	for j := range out {
		out[j] = DummyEndpoint(i*perService + j)
	}
	return out
}

// serviceObject is a selector-less single-stack IPv4 ClusterIP Service.
func serviceObject(name string, ip netip.Addr) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace},
		Spec: corev1.ServiceSpec{
			Type:           corev1.ServiceTypeClusterIP,
			ClusterIP:      ip.String(),
			ClusterIPs:     []string{ip.String()},
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicySingleStack),
			IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol},
			Ports: []corev1.ServicePort{{
				Name: PortName, Protocol: corev1.ProtocolTCP, Port: ServicePort, TargetPort: intstr.FromInt32(TargetPort),
			}},
		},
	}
}

// sliceObject is the hand-made EndpointSlice of Service svc: every address
// a ready endpoint on TargetPort.
// node is the endpoints' nodeName; "" spreads them over BenchNodes
// fictitious nodes.
func sliceObject(svc string, addrs []netip.Addr, node string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      svc + "-bench",
			Namespace: Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{
			Name: ptr.To(PortName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](TargetPort),
		}},
	}
	setSliceEndpoints(s, addrs, node)
	return s
}

func setSliceEndpoints(s *discoveryv1.EndpointSlice, addrs []netip.Addr, node string) {
	s.Endpoints = make([]discoveryv1.Endpoint, len(addrs))
	for i, a := range addrs {
		// nodeName as the EndpointSlice controller writes it: a large
		// cluster's endpoints are spread over many nodes, nearly all of
		// them not the node under test (BenchNodes fictitious ones; no
		// Node objects: neither proxy looks them up).
		n := node
		if n == "" {
			b := a.As4()
			n = fmt.Sprintf("bench-node-%03d", (int(b[2])<<8|int(b[3]))%BenchNodes)
		}
		s.Endpoints[i] = discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(n),
		}
	}
}

// BenchNodes is how many (fictitious) nodes the dummy endpoints run on.
const BenchNodes = 100

// Workload creates and changes the bench's API objects.
type Workload struct {
	Client kubernetes.Interface
	// PerService is the number of endpoints of each dummy Service.
	PerService int
	// Workers is the number of parallel creators.
	Workers int
	// Progress receives a line every few seconds while creating.
	Progress io.Writer

	// Probes is the number of probe Services wanted (fewer while N is
	// small: they count among the N).
	Probes int
	// ProbeBackend is the probe Services' endpoint (an echo pod).
	ProbeBackend netip.Addr
	// EchoNode is the node the echo pods run on (the nodeName of the echo
	// and probe endpoints).
	EchoNode string

	created int // dummy Services created so far (0..created-1)
	probes  int // probe Services created so far
	echo    *discoveryv1.EndpointSlice
}

// EnsureNamespace creates the bench namespace.
func (w *Workload) EnsureNamespace(ctx context.Context) error {
	_, err := w.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = nil
	}
	return err
}

// CreateEcho creates the echo Service with a single endpoint at backend.
func (w *Workload) CreateEcho(ctx context.Context, backend netip.Addr) error {
	if _, err := w.Client.CoreV1().Services(Namespace).Create(ctx, serviceObject(EchoService, EchoClusterIP), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating Service %s: %w", EchoService, err)
	}
	s, err := w.Client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, sliceObject(EchoService, []netip.Addr{backend}, w.EchoNode), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating EndpointSlice of %s: %w", EchoService, err)
	}
	w.echo = s
	return nil
}

// SetEchoBackend points the echo Service's EndpointSlice at backend (one
// API write) and returns when the write returned.
func (w *Workload) SetEchoBackend(ctx context.Context, backend netip.Addr) error {
	if w.echo == nil {
		return fmt.Errorf("echo Service not created")
	}
	s := w.echo.DeepCopy()
	setSliceEndpoints(s, []netip.Addr{backend}, w.EchoNode)
	got, err := w.Client.DiscoveryV1().EndpointSlices(Namespace).Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("updating EndpointSlice %s: %w", s.Name, err)
	}
	w.echo = got
	return nil
}

// Total is the number of bench Services (echo, probes, dummies).
func (w *Workload) Total() int { return 1 + w.probes + w.created }

// ClusterIPs are the ClusterIPs of every bench Service created so far.
func (w *Workload) ClusterIPs() []netip.Addr {
	out := []netip.Addr{EchoClusterIP}
	for j := 0; j < w.probes; j++ {
		out = append(out, ProbeClusterIP(j))
	}
	for i := 0; i < w.created; i++ {
		out = append(out, DummyClusterIP(i))
	}
	return out
}

// ProbeClusterIPs are the ClusterIPs with a real backend: echo and probes.
func (w *Workload) ProbeClusterIPs() []netip.Addr {
	return w.ClusterIPs()[:1+w.probes]
}

// GrowTo creates probe and dummy Services (and their EndpointSlices) until
// there are n bench Services in all, echo included.
func (w *Workload) GrowTo(ctx context.Context, n int) error {
	for w.probes < min(w.Probes, MaxProbeServices, n-1) {
		name := ProbeServiceName(w.probes)
		if _, err := w.Client.CoreV1().Services(Namespace).Create(ctx, serviceObject(name, ProbeClusterIP(w.probes)), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating Service %s: %w", name, err)
		}
		if _, err := w.Client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, sliceObject(name, []netip.Addr{w.ProbeBackend}, w.EchoNode), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating EndpointSlice of %s: %w", name, err)
		}
		w.probes++
	}
	want := n - 1 - w.probes // echo and probes are among the n
	if want <= w.created {
		return nil
	}
	from := w.created
	workers := max(w.Workers, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := w.createDummy(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				done.Add(1)
			}
		}()
	}
	start := time.Now()
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
feed:
	for i := from; i < want; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		case <-ticker.C:
			w.progressf("    created %d/%d dummy Services (+ EndpointSlices), %.0f/s", from+int(done.Load()), want, float64(done.Load())/time.Since(start).Seconds())
			i-- // nothing was sent this round
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w.created = want
	w.progressf("    %d dummy Services and EndpointSlices created in %s (%.0f objects/s)", want-from, time.Since(start).Round(time.Millisecond), float64(2*(want-from))/time.Since(start).Seconds())
	return nil
}

func (w *Workload) createDummy(ctx context.Context, i int) error {
	name := DummyServiceName(i)
	if _, err := w.Client.CoreV1().Services(Namespace).Create(ctx, serviceObject(name, DummyClusterIP(i)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s: %w", name, err)
	}
	if _, err := w.Client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, sliceObject(name, DummyEndpoints(i, w.PerService), ""), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating EndpointSlice of %s: %w", name, err)
	}
	return nil
}

func (w *Workload) progressf(format string, args ...any) {
	if w.Progress != nil {
		fmt.Fprintf(w.Progress, format+"\n", args...)
	}
}
