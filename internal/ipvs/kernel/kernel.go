// Package kernel is the IPVS mode's boundary to the kernel: the IPVS table
// (virtual and real servers, through generic netlink), the network link the
// virtual IPs are bound to, and sysctls. Each boundary is a small interface
// so the reconcile logic runs against the stateful fakes in ipvs/testing in
// unit tests; the real implementations here use github.com/moby/ipvs,
// github.com/vishvananda/netlink and /proc/sys.
//
// Types are kpr's own (netip, model.Protocol) rather than the libraries', so
// nothing above this package depends on how the kernel is spoken to.
package kernel

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Service flags, from include/uapi/linux/ip_vs.h (IP_VS_SVC_F_*).
const (
	// FlagPersistent is session affinity: a client keeps its real server
	// for Timeout seconds after its last connection.
	FlagPersistent uint32 = 0x0001
	// FlagHashed is set by the kernel on every listed service; it is
	// never sent and never compared.
	FlagHashed uint32 = 0x0002
	// FlagSched1 is the first scheduler flag (sh-fallback / mh-fallback).
	FlagSched1 uint32 = 0x0008
	// FlagSched2 is the second scheduler flag (sh-port / mh-port: hash
	// the source port too). kube-proxy sets it for the mh scheduler.
	FlagSched2 uint32 = 0x0010
)

// Key identifies a virtual server: protocol, address and port.
type Key struct {
	Protocol model.Protocol
	Addr     netip.Addr
	Port     uint16
}

// String is "TCP 198.19.192.10:80" or "TCP [2001:db8:20::a]:80".
func (k Key) String() string {
	return string(k.Protocol) + " " + netip.AddrPortFrom(k.Addr, k.Port).String()
}

// Less orders keys by address, port, then protocol.
func (k Key) Less(o Key) bool {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c < 0
	}
	if k.Port != o.Port {
		return k.Port < o.Port
	}
	return k.Protocol < o.Protocol
}

// Service is one IPVS virtual server.
type Service struct {
	Family   model.Family
	Protocol model.Protocol
	Addr     netip.Addr
	Port     uint16
	// FWMark is non-zero for firewall-mark services (which kpr never
	// creates and never touches); Protocol, Addr and Port are then unset.
	FWMark    uint32
	Scheduler string
	// Flags are IP_VS_SVC_F_* bits, FlagHashed excluded.
	Flags uint32
	// Timeout is the persistence timeout in seconds (with FlagPersistent).
	Timeout uint32
}

// Key returns the service's identity.
func (s *Service) Key() Key { return Key{Protocol: s.Protocol, Addr: s.Addr, Port: s.Port} }

// SameSettings reports whether s and o differ only in identity, i.e. an
// UpdateService from one to the other would change nothing.
func (s *Service) SameSettings(o *Service) bool {
	return s.Scheduler == o.Scheduler && s.Flags&^FlagHashed == o.Flags&^FlagHashed && s.Timeout == o.Timeout
}

// String describes the service like ipvsadm does.
func (s *Service) String() string {
	if s.FWMark != 0 {
		return fmt.Sprintf("FWM %d %s", s.FWMark, s.Scheduler)
	}
	out := s.Key().String() + " " + s.Scheduler
	if s.Flags&FlagPersistent != 0 {
		out += fmt.Sprintf(" persistent %d", s.Timeout)
	}
	if f := s.Flags &^ (FlagPersistent | FlagHashed); f != 0 {
		out += fmt.Sprintf(" flags %#x", f)
	}
	return out
}

// Destination is one real server of a virtual server. kpr always uses the
// masquerade (NAT) forwarding method.
type Destination struct {
	Addr   netip.Addr
	Port   uint16
	Weight int
	// Connection counters, as read from the kernel (ignored when writing).
	ActiveConns, InactiveConns int
}

// AddrPort is the real server's address and port.
func (d *Destination) AddrPort() netip.AddrPort { return netip.AddrPortFrom(d.Addr, d.Port) }

// Timeouts are the IPVS connection timeouts (`ipvsadm --set`). Zero leaves
// the kernel's value.
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}

// Handle is the IPVS table of one network namespace. Implementations are not
// safe for concurrent use.
type Handle interface {
	// GetServices lists every virtual server (all families, foreign ones
	// included).
	GetServices() ([]*Service, error)
	NewService(s *Service) error
	// UpdateService changes scheduler, flags and timeout in place; real
	// servers and connections are kept.
	UpdateService(s *Service) error
	// DelService removes the service with its real servers.
	DelService(s *Service) error

	GetDestinations(s *Service) ([]*Destination, error)
	NewDestination(s *Service, d *Destination) error
	UpdateDestination(s *Service, d *Destination) error
	DelDestination(s *Service, d *Destination) error

	GetTimeouts() (Timeouts, error)
	SetTimeouts(t Timeouts) error
}

// Sysctl reads and writes kernel parameters by their /proc/sys path
// ("net/ipv4/vs/conntrack").
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}
