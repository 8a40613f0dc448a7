package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/kpr-proxy/kpr/internal/model"
)

// MobyHandle implements Handle with github.com/moby/ipvs. It is safe for
// concurrent use (both families' proxiers may share one): moby's handle
// reads replies off one socket and drops those of other requests, so calls
// are serialised.
type MobyHandle struct {
	mu sync.Mutex
	h  *mobyipvs.Handle
}

var _ Handle = (*MobyHandle)(nil)

// ErrNoIPVS means the kernel has no IPVS (CONFIG_IP_VS unset or the ip_vs
// module not loadable).
var ErrNoIPVS = errors.New("IPVS is not available in this kernel (the ip_vs module is not loaded and cannot be loaded)")

// NewHandle opens the IPVS table of the network namespace at nsPath ("" for
// the caller's). It fails with ErrNoIPVS when the kernel has no IPVS: moby's
// handle would otherwise open fine and then answer every request with an
// empty result (moby/ipvs issue 27), which would look like an empty table.
func NewHandle(nsPath string) (*MobyHandle, error) {
	// moby runs `modprobe ip_vs` the first time a handle is made, so the
	// family is looked up afterwards. Generic netlink families are global,
	// not per namespace.
	h, err := mobyipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("opening the IPVS netlink socket: %w", err)
	}
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		h.Close()
		return nil, fmt.Errorf("%w: %v", ErrNoIPVS, err)
	}
	return &MobyHandle{h: h}, nil
}

// Close releases the netlink socket.
func (m *MobyHandle) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.h.Close()
}

func protoNumber(p model.Protocol) uint16 {
	switch p {
	case model.TCP:
		return syscall.IPPROTO_TCP
	case model.UDP:
		return syscall.IPPROTO_UDP
	case model.SCTP:
		return syscall.IPPROTO_SCTP
	}
	return 0
}

func protoName(n uint16) model.Protocol {
	switch n {
	case syscall.IPPROTO_TCP:
		return model.TCP
	case syscall.IPPROTO_UDP:
		return model.UDP
	case syscall.IPPROTO_SCTP:
		return model.SCTP
	}
	// A protocol kpr never uses: keep it distinct so it is never
	// mistaken for one of ours.
	return model.Protocol(fmt.Sprintf("proto-%d", n))
}

func toMoby(s *Service) *mobyipvs.Service {
	out := &mobyipvs.Service{
		SchedName: s.Scheduler,
		Flags:     s.Flags &^ FlagHashed,
		Timeout:   s.Timeout,
		FWMark:    s.FWMark,
	}
	if s.Family == model.IPv6 {
		out.AddressFamily, out.Netmask = syscall.AF_INET6, 128
	} else {
		out.AddressFamily, out.Netmask = syscall.AF_INET, 0xffffffff
	}
	if s.FWMark == 0 {
		out.Protocol = protoNumber(s.Protocol)
		out.Address = net.IP(s.Addr.AsSlice())
		out.Port = s.Port
	}
	return out
}

func fromMoby(s *mobyipvs.Service) *Service {
	out := &Service{
		Scheduler: s.SchedName,
		Flags:     s.Flags &^ FlagHashed,
		Timeout:   s.Timeout,
		FWMark:    s.FWMark,
		Family:    model.IPv4,
	}
	if s.AddressFamily == syscall.AF_INET6 {
		out.Family = model.IPv6
	}
	if s.FWMark == 0 {
		out.Protocol = protoName(s.Protocol)
		if a, ok := netip.AddrFromSlice(s.Address); ok {
			out.Addr = a.Unmap()
		}
		out.Port = s.Port
	}
	return out
}

func toMobyDest(d *Destination) *mobyipvs.Destination {
	out := &mobyipvs.Destination{
		Address:         net.IP(d.Addr.AsSlice()),
		Port:            d.Port,
		Weight:          d.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
	}
	if d.Addr.Is4() {
		out.AddressFamily = syscall.AF_INET
	} else {
		out.AddressFamily = syscall.AF_INET6
	}
	return out
}

func (m *MobyHandle) GetServices() ([]*Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	svcs, err := m.h.GetServices()
	if err != nil {
		return nil, err
	}
	out := make([]*Service, 0, len(svcs))
	for _, s := range svcs {
		out = append(out, fromMoby(s))
	}
	return out, nil
}

func (m *MobyHandle) NewService(s *Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.NewService(toMoby(s))
}

func (m *MobyHandle) UpdateService(s *Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.UpdateService(toMoby(s))
}

func (m *MobyHandle) DelService(s *Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.DelService(toMoby(s))
}

func (m *MobyHandle) GetDestinations(s *Service) ([]*Destination, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ds, err := m.h.GetDestinations(toMoby(s))
	if err != nil {
		return nil, err
	}
	out := make([]*Destination, 0, len(ds))
	for _, d := range ds {
		a, _ := netip.AddrFromSlice(d.Address)
		out = append(out, &Destination{
			Addr: a.Unmap(), Port: d.Port, Weight: d.Weight,
			ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections,
		})
	}
	return out, nil
}

func (m *MobyHandle) NewDestination(s *Service, d *Destination) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.NewDestination(toMoby(s), toMobyDest(d))
}

func (m *MobyHandle) UpdateDestination(s *Service, d *Destination) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.UpdateDestination(toMoby(s), toMobyDest(d))
}

func (m *MobyHandle) DelDestination(s *Service, d *Destination) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.DelDestination(toMoby(s), toMobyDest(d))
}

func (m *MobyHandle) GetTimeouts() (Timeouts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.h.GetConfig()
	if err != nil {
		return Timeouts{}, err
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

func (m *MobyHandle) SetTimeouts(t Timeouts) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.SetConfig(&mobyipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP})
}
