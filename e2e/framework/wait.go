package framework

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Poll calls cond every interval until it returns nil or timeout passes, and
// returns the last error then. It is the one waiting primitive: e2e checks
// wait for a state, never sleep a fixed time.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = cond(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s: %w", timeout, last)
		case <-time.After(interval):
		}
	}
}

// Eventually is Poll (100ms interval) that fails the test on timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func(context.Context) error) {
	t.Helper()
	if err := Poll(context.Background(), timeout, 100*time.Millisecond, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// EndpointSliceAddresses returns the ready-or-not endpoint addresses of all
// EndpointSlices of a Service (sorted, de-duplicated).
func (c *Cluster) EndpointSliceAddresses(ctx context.Context, namespace, service string) ([]netip.Addr, error) {
	list, err := c.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + service,
	})
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, s := range list.Items {
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && !slices.Contains(out, ip) {
					out = append(out, ip)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// WaitForEndpoints waits until the Service's EndpointSlices hold exactly
// want (in any order, both families together).
func (c *Cluster) WaitForEndpoints(t testing.TB, namespace, service string, want []netip.Addr, timeout time.Duration) {
	t.Helper()
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b netip.Addr) int { return a.Compare(b) })
	Eventually(t, timeout, fmt.Sprintf("EndpointSlices of %s/%s to be %v", namespace, service, want), func(ctx context.Context) error {
		got, err := c.EndpointSliceAddresses(ctx, namespace, service)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("have %v", got)
		}
		return nil
	})
}

func ipPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// AddrPort formats ip:port (with brackets for IPv6) for Query and dialing.
func AddrPort(ip netip.Addr, port int) string { return ipPort(ip, uint16(port)) }
