package vm

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// IPVSTable is `ipvsadm -Ln` parsed: what the kernel really has, for
// assertions and failure messages.
type IPVSTable struct {
	Services []VirtualServer
	// Raw is the command's output.
	Raw string
}

// VirtualServer is one IPVS virtual service.
type VirtualServer struct {
	// Proto is TCP, UDP, SCTP or FWM.
	Proto string
	// Addr is the virtual address and port (invalid for FWM).
	Addr netip.AddrPort
	// Mark is the firewall mark of an FWM service.
	Mark      int
	Scheduler string
	// Persistent is the session-affinity timeout in seconds (0: none).
	Persistent int
	// Flags is the rest of the line after the scheduler, as printed.
	Flags string
	Reals []RealServer
}

// RealServer is one destination of a virtual service.
type RealServer struct {
	Addr       netip.AddrPort
	Forward    string
	Weight     int
	ActiveConn int
	InActConn  int
}

// ParseIPVSAdm parses `ipvsadm -Ln` output.
func ParseIPVSAdm(out string) (*IPVSTable, error) {
	t := &IPVSTable{Raw: out}
	for i, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "IP", "Prot":
			continue
		case "->":
			if len(f) >= 2 && f[1] == "RemoteAddress:Port" {
				continue
			}
			if len(t.Services) == 0 {
				return nil, fmt.Errorf("ipvsadm line %d: real server before any service: %q", i+1, line)
			}
			if len(f) != 6 {
				return nil, fmt.Errorf("ipvsadm line %d: want \"-> addr:port forward weight active inactive\", got %q", i+1, line)
			}
			rs := RealServer{Forward: f[2]}
			var err error
			if rs.Addr, err = netip.ParseAddrPort(f[1]); err != nil {
				return nil, fmt.Errorf("ipvsadm line %d: %w", i+1, err)
			}
			nums := []*int{&rs.Weight, &rs.ActiveConn, &rs.InActConn}
			for j, p := range nums {
				if *p, err = strconv.Atoi(f[3+j]); err != nil {
					return nil, fmt.Errorf("ipvsadm line %d: %w", i+1, err)
				}
			}
			vs := &t.Services[len(t.Services)-1]
			vs.Reals = append(vs.Reals, rs)
		case "TCP", "UDP", "SCTP", "FWM":
			if len(f) < 3 {
				return nil, fmt.Errorf("ipvsadm line %d: want \"proto addr scheduler [flags]\", got %q", i+1, line)
			}
			vs := VirtualServer{Proto: f[0], Scheduler: f[2], Flags: strings.Join(f[3:], " ")}
			var err error
			if f[0] == "FWM" {
				if vs.Mark, err = strconv.Atoi(f[1]); err != nil {
					return nil, fmt.Errorf("ipvsadm line %d: %w", i+1, err)
				}
			} else if vs.Addr, err = netip.ParseAddrPort(f[1]); err != nil {
				return nil, fmt.Errorf("ipvsadm line %d: %w", i+1, err)
			}
			for j := 3; j+1 < len(f); j++ {
				if f[j] == "persistent" {
					if vs.Persistent, err = strconv.Atoi(f[j+1]); err != nil {
						return nil, fmt.Errorf("ipvsadm line %d: persistent: %w", i+1, err)
					}
				}
			}
			t.Services = append(t.Services, vs)
		default:
			return nil, fmt.Errorf("ipvsadm line %d: unexpected %q", i+1, line)
		}
	}
	return t, nil
}

// Find returns the virtual service proto addr (e.g. "TCP",
// 198.19.192.10:80), or nil.
func (t *IPVSTable) Find(proto string, addr netip.AddrPort) *VirtualServer {
	for i := range t.Services {
		if t.Services[i].Proto == proto && t.Services[i].Addr == addr {
			return &t.Services[i]
		}
	}
	return nil
}

// Filter returns a table with the services keep accepts.
func (t *IPVSTable) Filter(keep func(*VirtualServer) bool) *IPVSTable {
	out := &IPVSTable{Raw: t.Raw}
	for i := range t.Services {
		if keep(&t.Services[i]) {
			out.Services = append(out.Services, t.Services[i])
		}
	}
	return out
}

// Real returns the real server addr of the service, or nil.
func (vs *VirtualServer) Real(addr netip.AddrPort) *RealServer {
	for i := range vs.Reals {
		if vs.Reals[i].Addr == addr {
			return &vs.Reals[i]
		}
	}
	return nil
}

// RealAddrs returns the real servers' addresses, sorted.
func (vs *VirtualServer) RealAddrs() []string {
	out := make([]string, 0, len(vs.Reals))
	for _, r := range vs.Reals {
		out = append(out, r.Addr.String())
	}
	sort.Strings(out)
	return out
}

// Shape is the table without connection counters, one line per service
// and real server, sorted: two tables with the same Shape program the same
// forwarding (used to compare before and after a proxy restart).
func (t *IPVSTable) Shape() string {
	var lines []string
	for _, vs := range t.Services {
		key := vs.Proto + " " + vs.Addr.String()
		if vs.Proto == "FWM" {
			key = fmt.Sprintf("FWM %d", vs.Mark)
		}
		lines = append(lines, fmt.Sprintf("%s %s %s", key, vs.Scheduler, vs.Flags))
		for _, r := range vs.Reals {
			lines = append(lines, fmt.Sprintf("%s -> %s %s w=%d", key, r.Addr, r.Forward, r.Weight))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
