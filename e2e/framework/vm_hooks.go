package framework

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"go.uber.org/zap"
)

// Hooks for e2e/vm, the IPVS test VM: a node whose kernel is a qemu guest
// rather than a namespace of the host. The VM plays one of the cluster's
// nodes (same name and addresses as the Node object the harness
// registered); its pods live inside the guest, so the harness only writes
// their API objects.

// StartVMProcess runs a long-lived process (qemu) in one of the cluster's
// namespaces with its output in LogDir/<spec.Name>.log; teardown stops it
// like every other harness process (and SIGINT/SIGTERM handling kills it
// with its namespace).
func (c *Cluster) StartVMProcess(spec ProcessSpec) (*Process, error) {
	if spec.NS == nil {
		return nil, fmt.Errorf("StartVMProcess(%s): ProcessSpec.NS is required", spec.Name)
	}
	return c.startProcess(spec)
}

// CreateRemotePod creates a Pod object on node spec.Node for a workload the
// caller runs itself (inside the VM) at ips, and writes the status a kubelet
// would (Running, Ready unless spec.NotReady, podIPs = ips, the echo
// server's named ports). The returned Pod has no namespace or process on
// the host: SetReady, Terminate and Finish work on the API object (Finish
// deletes it; stopping the workload is the caller's job); Query and the
// other NetNS methods must not be used. It is deleted when the test ends.
func (c *Cluster) CreateRemotePod(t testing.TB, spec PodSpec, ips ...netip.Addr) *Pod {
	t.Helper()
	p, err := c.createRemotePod(context.Background(), spec, ips)
	if err != nil {
		t.Fatalf("CreateRemotePod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	t.Cleanup(func() {
		if err := p.finish(context.Background()); err != nil {
			t.Logf("cleanup of pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	})
	return p
}

func (c *Cluster) createRemotePod(ctx context.Context, spec PodSpec, ips []netip.Addr) (*Pod, error) {
	if len(ips) == 0 || len(ips) > 2 {
		return nil, fmt.Errorf("want one or two pod IPs, got %v", ips)
	}
	created, node, err := c.createPodObject(ctx, &spec)
	if err != nil {
		return nil, err
	}
	key := spec.Namespace + "/" + spec.Name
	p := &Pod{Name: spec.Name, Namespace: spec.Namespace, UID: string(created.UID), Node: node, c: c, IPs: append([]netip.Addr(nil), ips...)}
	ipv4First(p.IPs)
	c.mu.Lock()
	c.pods[key] = p
	c.mu.Unlock()
	if err := p.writeStatus(ctx, !spec.NotReady); err != nil {
		_ = p.finish(context.Background())
		return nil, err
	}
	c.Log.Info("remote pod running", zap.String("pod", key), zap.String("node", node.Name), zap.Any("ips", p.IPs), zap.Bool("ready", !spec.NotReady))
	return p, nil
}
