// Package ipset is the IPVS mode's boundary to the kernel's ip sets, and the
// pure helpers around it: set and entry types in the canonical text form
// `ipset save` prints, a parser for that output, and a writer for
// `ipset restore` batches.
//
// The boundary is text, like iptables-restore's: Interface has Save and
// Restore, so one sync costs one `ipset restore` process however many entries
// change, a failed batch names its line, and the stateful fake in
// ipvs/testing interprets exactly what the kernel would be sent. kube-proxy
// drives the same binary the same way. (vishvananda/netlink's ipset calls
// were considered: they need one round trip per entry, log unknown
// attributes through the standard library's global logger, and miss set
// revisions for bitmap:port; the binary is the better-trodden path.)
//
// Batches always write protocols as numbers ("6:80", not "tcp:80"): ipset
// resolves names through /etc/protocols, which minimal node images lack, and
// then rejects (or, in restore mode on some builds, silently skips) the
// entry. The parser accepts both forms and canonicalises to names.
package ipset

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Type is an ipset set type.
type Type string

const (
	HashIP        Type = "hash:ip"
	HashIPPort    Type = "hash:ip,port"
	HashIPPortIP  Type = "hash:ip,port,ip"
	HashIPPortNet Type = "hash:ip,port,net"
	BitmapPort    Type = "bitmap:port"
)

// MaxNameLen is the longest set name the kernel accepts
// (IPSET_MAXNAMELEN - 1).
const MaxNameLen = 31

// DefaultMaxElem is the maxelem kpr creates hash sets with. It is only a
// cap (memory grows with the entries), set well above kube-proxy's 65536 so
// that very large clusters do not hit it.
const DefaultMaxElem = 1 << 20

// HashSize is the initial hash size; the kernel grows it as needed.
const HashSize = 1024

// Set is one ip set: its definition and its entries in canonical form.
type Set struct {
	Name   string
	Type   Type
	Family model.Family // hash types only; bitmap:port has no family
	// MaxElem of hash sets (0 when unknown).
	MaxElem int
	Entries map[string]struct{}
}

// NewSet returns an empty set as kpr creates it.
func NewSet(name string, t Type, f model.Family) *Set {
	s := &Set{Name: name, Type: t, Entries: map[string]struct{}{}}
	if t != BitmapPort {
		s.Family, s.MaxElem = f, DefaultMaxElem
	}
	return s
}

// Add inserts a canonical entry.
func (s *Set) Add(entry string) { s.Entries[entry] = struct{}{} }

// Has reports whether the set holds a canonical entry.
func (s *Set) Has(entry string) bool {
	_, ok := s.Entries[entry]
	return ok
}

// Sorted returns the entries in a stable order.
func (s *Set) Sorted() []string {
	out := make([]string, 0, len(s.Entries))
	for e := range s.Entries {
		out = append(out, e)
	}
	sort.Strings(out)
	return out
}

// Compatible reports whether o could be created with s's create line under
// `-exist` (same type, family and maxelem; the kernel ignores hash size).
func (s *Set) Compatible(o *Set) bool {
	if s.Type != o.Type {
		return false
	}
	if s.Type == BitmapPort {
		return true
	}
	return s.Family == o.Family && (s.MaxElem == 0 || o.MaxElem == 0 || s.MaxElem == o.MaxElem)
}

// Definition is the create line's arguments after the name, as kpr writes
// them.
func (s *Set) Definition() string {
	if s.Type == BitmapPort {
		return string(s.Type) + " range 0-65535"
	}
	fam := "inet"
	if s.Family == model.IPv6 {
		fam = "inet6"
	}
	maxElem := s.MaxElem
	if maxElem == 0 {
		maxElem = DefaultMaxElem
	}
	return fmt.Sprintf("%s family %s hashsize %d maxelem %d", s.Type, fam, HashSize, maxElem)
}

// Entry constructors, in the canonical form the parser produces.

// IP is a hash:ip entry.
func IP(a netip.Addr) string { return a.String() }

// IPPort is a hash:ip,port entry.
func IPPort(a netip.Addr, p model.Protocol, port uint16) string {
	return a.String() + "," + p.Lower() + ":" + strconv.Itoa(int(port))
}

// IPPortIP is a hash:ip,port,ip entry.
func IPPortIP(a netip.Addr, p model.Protocol, port uint16, b netip.Addr) string {
	return IPPort(a, p, port) + "," + b.String()
}

// IPPortNet is a hash:ip,port,net entry. The prefix must have a length of at
// least 1 (see SplitZero).
func IPPortNet(a netip.Addr, p model.Protocol, port uint16, n netip.Prefix) string {
	return IPPort(a, p, port) + "," + n.Masked().String()
}

// Port is a bitmap:port entry.
func Port(port uint16) string { return strconv.Itoa(int(port)) }

// SplitZero returns a prefix usable in a hash:net type set: those reject a
// zero-length prefix, so 0.0.0.0/0 becomes 0.0.0.0/1 and 128.0.0.0/1 (and
// ::/0 likewise); other prefixes are returned as they are.
func SplitZero(p netip.Prefix) []netip.Prefix {
	if p.Bits() != 0 {
		return []netip.Prefix{p.Masked()}
	}
	if p.Addr().Is4() {
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1")}
	}
	return []netip.Prefix{netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/1")}
}

var protoNumbers = map[string]string{"tcp": "6", "udp": "17", "sctp": "132"}
var protoNames = map[string]string{"6": "tcp", "17": "udp", "132": "sctp", "tcp": "tcp", "udp": "udp", "sctp": "sctp"}

// ParseEntry checks an entry of a set of type t and family f and returns it
// in canonical form: protocol names, canonical addresses, prefixes always
// with their length.
func ParseEntry(t Type, f model.Family, s string) (string, error) {
	parts := strings.Split(s, ",")
	want := map[Type]int{HashIP: 1, HashIPPort: 2, HashIPPortIP: 3, HashIPPortNet: 3, BitmapPort: 1}[t]
	if want == 0 {
		return "", fmt.Errorf("unsupported set type %q", t)
	}
	if len(parts) != want {
		return "", fmt.Errorf("entry %q does not fit type %s", s, t)
	}
	if t == BitmapPort {
		n, err := strconv.ParseUint(parts[0], 10, 16)
		if err != nil {
			return "", fmt.Errorf("entry %q: bad port", s)
		}
		return Port(uint16(n)), nil
	}
	addr := func(x string) (netip.Addr, error) {
		a, err := netip.ParseAddr(x)
		if err != nil || !f.Contains(a) {
			return netip.Addr{}, fmt.Errorf("entry %q: %q is not a %s address", s, x, f)
		}
		return a, nil
	}
	a, err := addr(parts[0])
	if err != nil {
		return "", err
	}
	out := a.String()
	if t == HashIP {
		return out, nil
	}
	proto, port, ok := strings.Cut(parts[1], ":")
	name, known := protoNames[strings.ToLower(proto)]
	if !ok || !known {
		return "", fmt.Errorf("entry %q: want tcp|udp|sctp:port, got %q", s, parts[1])
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", fmt.Errorf("entry %q: bad port", s)
	}
	out += "," + name + ":" + strconv.Itoa(int(n))
	switch t {
	case HashIPPortIP:
		b, err := addr(parts[2])
		if err != nil {
			return "", err
		}
		out += "," + b.String()
	case HashIPPortNet:
		x := parts[2]
		if !strings.Contains(x, "/") {
			b, err := addr(x)
			if err != nil {
				return "", err
			}
			x = netip.PrefixFrom(b, b.BitLen()).String()
		}
		p, err := netip.ParsePrefix(x)
		if err != nil || !f.Contains(p.Addr()) {
			return "", fmt.Errorf("entry %q: %q is not a %s prefix", s, parts[2], f)
		}
		if p.Bits() == 0 {
			return "", fmt.Errorf("entry %q: ipset cannot hold a /0 network (split it in two /1)", s)
		}
		out += "," + p.Masked().String()
	}
	return out, nil
}

// restoreForm rewrites a canonical entry with numeric protocols for
// `ipset restore` (see the package comment).
func restoreForm(entry string) string {
	first, rest, ok := strings.Cut(entry, ",")
	if !ok {
		return entry
	}
	proto, tail, ok := strings.Cut(rest, ":")
	if num, known := protoNumbers[proto]; ok && known {
		return first + "," + num + ":" + tail
	}
	return entry
}
