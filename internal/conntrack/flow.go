package conntrack

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// IANA protocol numbers of the protocols the proxy cares about.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// ProtoNumber maps a Service protocol to its IANA number (0 if unknown).
func ProtoNumber(p model.Protocol) uint8 {
	switch p {
	case model.TCP:
		return ProtoTCP
	case model.UDP:
		return ProtoUDP
	case model.SCTP:
		return ProtoSCTP
	}
	return 0
}

// ProtoName is the conntrack(8) spelling of a protocol number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// ParseProto is the inverse of ProtoName; it also accepts a decimal number.
func ParseProto(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "icmp":
		return ProtoICMP, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmpv6", "ipv6-icmp":
		return ProtoICMPv6, nil
	case "sctp":
		return ProtoSCTP, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("unknown protocol %q (want tcp, udp, sctp, icmp, icmpv6 or a number 1-255)", s)
	}
	return uint8(n), nil
}

// Tuple is one direction of a flow. Ports are zero for protocols without
// ports; ICMP flows carry their id/type/code instead (needed to address the
// entry when deleting it).
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16

	ICMPID   uint16
	ICMPType uint8
	ICMPCode uint8
}

// SrcAddrPort is the source as ip:port.
func (t Tuple) SrcAddrPort() netip.AddrPort { return netip.AddrPortFrom(t.Src, t.SrcPort) }

// DstAddrPort is the destination as ip:port.
func (t Tuple) DstAddrPort() netip.AddrPort { return netip.AddrPortFrom(t.Dst, t.DstPort) }

// Flow is one conntrack entry, decoupled from the netlink library so that
// the selection logic and the fake need nothing kernel-specific.
type Flow struct {
	// ID is the kernel's id for the entry (stable for its lifetime). When
	// non-zero, Delete only removes the entry if it still has this id.
	ID       uint32
	Family   model.Family
	Protocol uint8
	// Orig is the tuple as the first packet saw it (client → frontend);
	// Reply is the tuple replies must match (endpoint → client), so after
	// DNAT Reply.Src is the endpoint the kernel chose.
	Orig, Reply Tuple
	Zone        uint16
	Mark        uint32
	// Timeout is the remaining lifetime in seconds.
	Timeout uint32
	// Status is the IPS_* bit set (see StatusSeenReply, StatusAssured...).
	Status uint32
	// TCPState is the conntrack TCP state (TCPStateName); 0 for other protocols.
	TCPState uint8
	// SCTPState is the conntrack SCTP state; 0 for other protocols.
	SCTPState uint8
	// Packets/Bytes are the per-direction counters (zero unless
	// net.netfilter.nf_conntrack_acct is on).
	PacketsOrig, BytesOrig   uint64
	PacketsReply, BytesReply uint64
}

// Conntrack status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
const (
	StatusExpected  uint32 = 1 << 0
	StatusSeenReply uint32 = 1 << 1
	StatusAssured   uint32 = 1 << 2
	StatusConfirmed uint32 = 1 << 3
	StatusSrcNAT    uint32 = 1 << 4
	StatusDstNAT    uint32 = 1 << 5
	StatusDying     uint32 = 1 << 9
)

var tcpStates = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// TCPStateName is conntrack(8)'s name for a TCP state.
func TCPStateName(s uint8) string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return strconv.Itoa(int(s))
}

// String renders the flow like one line of `conntrack -L`.
func (f *Flow) String() string {
	var b strings.Builder
	b.WriteString(ProtoName(f.Protocol))
	b.WriteByte(' ')
	b.WriteString(strconv.FormatUint(uint64(f.Timeout), 10))
	if f.Protocol == ProtoTCP {
		b.WriteByte(' ')
		b.WriteString(TCPStateName(f.TCPState))
	}
	writeTuple(&b, f.Orig, f.Protocol)
	if f.Status&StatusSeenReply == 0 {
		b.WriteString(" [UNREPLIED]")
	}
	writeTuple(&b, f.Reply, f.Protocol)
	if f.Status&StatusAssured != 0 {
		b.WriteString(" [ASSURED]")
	}
	if f.Mark != 0 {
		b.WriteString(" mark=")
		b.WriteString(strconv.FormatUint(uint64(f.Mark), 10))
	}
	if f.Zone != 0 {
		b.WriteString(" zone=")
		b.WriteString(strconv.FormatUint(uint64(f.Zone), 10))
	}
	return b.String()
}

func writeTuple(b *strings.Builder, t Tuple, proto uint8) {
	b.WriteString(" src=")
	b.WriteString(t.Src.String())
	b.WriteString(" dst=")
	b.WriteString(t.Dst.String())
	switch proto {
	case ProtoICMP, ProtoICMPv6:
		fmt.Fprintf(b, " type=%d code=%d id=%d", t.ICMPType, t.ICMPCode, t.ICMPID)
	default:
		b.WriteString(" sport=")
		b.WriteString(strconv.Itoa(int(t.SrcPort)))
		b.WriteString(" dport=")
		b.WriteString(strconv.Itoa(int(t.DstPort)))
	}
}

// Filter selects flows. Zero fields match anything. It mirrors the
// conntrack(8) options --orig-src/--orig-dst/--reply-src/--reply-dst,
// --orig-port-*/--reply-port-*, -p and --mark.
type Filter struct {
	Protocol uint8

	OrigSrc, OrigDst, ReplySrc, ReplyDst                 netip.Addr
	OrigSrcPort, OrigDstPort, ReplySrcPort, ReplyDstPort uint16

	// Mark/MarkMask: (flow.Mark & MarkMask) == Mark. MarkMask 0 means no
	// mark filter.
	Mark, MarkMask uint32
}

// Match reports whether f selects fl.
func (f *Filter) Match(fl *Flow) bool {
	switch {
	case f.Protocol != 0 && f.Protocol != fl.Protocol,
		f.OrigSrc.IsValid() && f.OrigSrc != fl.Orig.Src,
		f.OrigDst.IsValid() && f.OrigDst != fl.Orig.Dst,
		f.ReplySrc.IsValid() && f.ReplySrc != fl.Reply.Src,
		f.ReplyDst.IsValid() && f.ReplyDst != fl.Reply.Dst,
		f.OrigSrcPort != 0 && f.OrigSrcPort != fl.Orig.SrcPort,
		f.OrigDstPort != 0 && f.OrigDstPort != fl.Orig.DstPort,
		f.ReplySrcPort != 0 && f.ReplySrcPort != fl.Reply.SrcPort,
		f.ReplyDstPort != 0 && f.ReplyDstPort != fl.Reply.DstPort,
		f.MarkMask != 0 && fl.Mark&f.MarkMask != f.Mark:
		return false
	}
	return true
}

// Validate rejects filters that can never match a flow of family fam
// (an address of the other family), so a typo in the CLI is an error rather
// than a silent "0 flows".
func (f *Filter) Validate(fam model.Family) error {
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{{"orig-src", f.OrigSrc}, {"orig-dst", f.OrigDst}, {"reply-src", f.ReplySrc}, {"reply-dst", f.ReplyDst}} {
		if a.addr.IsValid() && !fam.Contains(a.addr) {
			return fmt.Errorf("filter %s %s is not an %s address", a.name, a.addr, fam)
		}
	}
	if f.MarkMask != 0 && f.Mark&^f.MarkMask != 0 {
		return fmt.Errorf("filter mark %#x has bits outside mask %#x", f.Mark, f.MarkMask)
	}
	return nil
}
