package conntrack

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	ctlib "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/kpr-proxy/kpr/internal/model"
)

// ctnetlink constants (include/uapi/linux/netfilter/nfnetlink_conntrack.h
// and the CTA_FILTER_F_* flags of net/netfilter/nf_conntrack_netlink.c).
// ti-mo/conntrack keeps these unexported and offers neither a delete that
// checks CTA_ID nor a dump filter on the L4 protocol, which is why the
// request messages are built here; decoding stays with the library.
const (
	ctMsgGet    = 1 // IPCTNL_MSG_CT_GET
	ctMsgDelete = 2 // IPCTNL_MSG_CT_DELETE

	ctaTupleOrig = 1
	ctaID        = 12
	ctaZone      = 18
	ctaFilter    = 25

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum        = 1
	ctaProtoSrcPort    = 2
	ctaProtoDstPort    = 3
	ctaProtoICMPID     = 4
	ctaProtoICMPType   = 5
	ctaProtoICMPCode   = 6
	ctaProtoICMPv6ID   = 7
	ctaProtoICMPv6Type = 8
	ctaProtoICMPv6Code = 9

	ctaFilterOrigFlags = 1
	// CTA_FILTER_F_CTA_PROTO_NUM: match the original tuple's L4 protocol.
	ctaFilterFlagProtoNum = 1 << 3
)

func nfFamily(f model.Family) netfilter.ProtoFamily {
	if f == model.IPv6 {
		return netfilter.ProtoIPv6
	}
	return netfilter.ProtoIPv4
}

// dumpRequest asks for every entry of the family, or, with proto != 0,
// only those whose original tuple has that L4 protocol (CTA_FILTER, Linux
// 5.8+; older kernels ignore the attribute and the caller filters in Go).
func dumpRequest(fam model.Family, proto uint8) (netlink.Message, error) {
	var attrs []netfilter.Attribute
	if proto != 0 {
		flags := make([]byte, 4)
		// CTA_FILTER_ORIG_FLAGS is read with nla_get_u32: host byte order,
		// unlike the big-endian CTA_* payloads.
		binary.NativeEndian.PutUint32(flags, ctaFilterFlagProtoNum)
		attrs = []netfilter.Attribute{
			{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{
				{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
					{Type: ctaProtoNum, Data: []byte{proto}},
				}},
			}},
			{Type: ctaFilter, Nested: true, Children: []netfilter.Attribute{
				{Type: ctaFilterOrigFlags, Data: flags},
			}},
		}
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ctMsgGet,
		Family:      nfFamily(fam),
		Flags:       netlink.Request | netlink.Dump,
	}, attrs)
}

// deleteRequest addresses one entry by its original tuple and zone, and by
// its id when known (the kernel answers ENOENT if the id differs).
func deleteRequest(fl *Flow) (netlink.Message, error) {
	ipt, err := ipTupleAttr(fl)
	if err != nil {
		return netlink.Message{}, err
	}
	attrs := []netfilter.Attribute{
		{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{ipt, protoTupleAttr(fl.Protocol, fl.Orig)}},
	}
	if fl.Zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(fl.Zone)})
	}
	if fl.ID != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaID, Data: netfilter.Uint32Bytes(fl.ID)})
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ctMsgDelete,
		Family:      nfFamily(fl.Family),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
}

func ipTupleAttr(fl *Flow) (netfilter.Attribute, error) {
	src, dst := fl.Orig.Src, fl.Orig.Dst
	a := netfilter.Attribute{Type: ctaTupleIP, Nested: true}
	switch {
	case fl.Family == model.IPv4 && src.Is4() && dst.Is4():
		a.Children = []netfilter.Attribute{{Type: ctaIPv4Src, Data: src.AsSlice()}, {Type: ctaIPv4Dst, Data: dst.AsSlice()}}
	case fl.Family == model.IPv6 && src.Is6() && dst.Is6():
		a.Children = []netfilter.Attribute{{Type: ctaIPv6Src, Data: src.AsSlice()}, {Type: ctaIPv6Dst, Data: dst.AsSlice()}}
	default:
		return a, fmt.Errorf("flow %s: addresses %v/%v do not match family %v", fl.String(), src, dst, fl.Family)
	}
	return a, nil
}

func protoTupleAttr(proto uint8, t Tuple) netfilter.Attribute {
	c := []netfilter.Attribute{{Type: ctaProtoNum, Data: []byte{proto}}}
	switch proto {
	case ProtoICMP:
		c = append(c,
			netfilter.Attribute{Type: ctaProtoICMPID, Data: netfilter.Uint16Bytes(t.ICMPID)},
			netfilter.Attribute{Type: ctaProtoICMPType, Data: []byte{t.ICMPType}},
			netfilter.Attribute{Type: ctaProtoICMPCode, Data: []byte{t.ICMPCode}})
	case ProtoICMPv6:
		c = append(c,
			netfilter.Attribute{Type: ctaProtoICMPv6ID, Data: netfilter.Uint16Bytes(t.ICMPID)},
			netfilter.Attribute{Type: ctaProtoICMPv6Type, Data: []byte{t.ICMPType}},
			netfilter.Attribute{Type: ctaProtoICMPv6Code, Data: []byte{t.ICMPCode}})
	default:
		c = append(c,
			netfilter.Attribute{Type: ctaProtoSrcPort, Data: netfilter.Uint16Bytes(t.SrcPort)},
			netfilter.Attribute{Type: ctaProtoDstPort, Data: netfilter.Uint16Bytes(t.DstPort)})
	}
	return netfilter.Attribute{Type: ctaTupleProto, Nested: true, Children: c}
}

// decodeMessage turns one ctnetlink message (a dump reply or an event)
// into a Flow. The library's Event decoder handles both NEW and DELETE
// message types.
func decodeMessage(m netlink.Message) (EventType, Flow, error) {
	var ev ctlib.Event
	if err := ev.Unmarshal(m); err != nil {
		return 0, Flow{}, err
	}
	if ev.Flow == nil {
		return 0, Flow{}, fmt.Errorf("ctnetlink message without a flow")
	}
	var t EventType
	switch ev.Type {
	case ctlib.EventNew:
		t = EventNew
	case ctlib.EventUpdate:
		t = EventUpdate
	case ctlib.EventDestroy:
		t = EventDestroy
	}
	return t, fromLib(ev.Flow), nil
}

func fromLib(f *ctlib.Flow) Flow {
	out := Flow{
		ID:           f.ID,
		Family:       model.IPv4,
		Protocol:     f.TupleOrig.Proto.Protocol,
		Orig:         tupleFromLib(f.TupleOrig),
		Reply:        tupleFromLib(f.TupleReply),
		Zone:         f.Zone,
		Mark:         f.Mark,
		Timeout:      f.Timeout,
		Status:       uint32(f.Status),
		PacketsOrig:  f.CountersOrig.Packets,
		BytesOrig:    f.CountersOrig.Bytes,
		PacketsReply: f.CountersReply.Packets,
		BytesReply:   f.CountersReply.Bytes,
	}
	if f.TupleOrig.IP.SourceAddress.Is6() {
		out.Family = model.IPv6
	}
	if f.ProtoInfo.TCP != nil {
		out.TCPState = f.ProtoInfo.TCP.State
	}
	if f.ProtoInfo.SCTP != nil {
		out.SCTPState = f.ProtoInfo.SCTP.State
	}
	return out
}

func tupleFromLib(t ctlib.Tuple) Tuple {
	return Tuple{
		Src:      t.IP.SourceAddress,
		Dst:      t.IP.DestinationAddress,
		SrcPort:  t.Proto.SourcePort,
		DstPort:  t.Proto.DestinationPort,
		ICMPID:   t.Proto.ICMPID,
		ICMPType: t.Proto.ICMPType,
		ICMPCode: t.Proto.ICMPCode,
	}
}
