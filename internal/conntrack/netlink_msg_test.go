package conntrack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"

	"github.com/kpr-proxy/kpr/internal/model"
)

// The delete request must carry exactly what the kernel looks the entry up
// by. Decoding it with the library's own decoder checks the encoding
// against an independent implementation.
func TestDeleteRequestRoundTrip(t *testing.T) {
	for _, fl := range []Flow{
		{
			ID: 0xdeadbeef, Family: model.IPv4, Protocol: ProtoUDP, Zone: 7,
			Orig: Tuple{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("198.19.192.10"), SrcPort: 40000, DstPort: 53},
		},
		{
			ID: 42, Family: model.IPv6, Protocol: ProtoSCTP,
			Orig: Tuple{Src: netip.MustParseAddr("2001:db8:1::7"), Dst: netip.MustParseAddr("2001:db8:20::a"), SrcPort: 1, DstPort: 3868},
		},
		{
			Family: model.IPv4, Protocol: ProtoICMP,
			Orig: Tuple{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("198.18.1.2"), ICMPID: 77, ICMPType: 8},
		},
	} {
		m, err := deleteRequest(&fl)
		if err != nil {
			t.Fatalf("%s: %v", fl.String(), err)
		}
		h, _, err := netfilter.UnmarshalNetlink(m)
		if err != nil {
			t.Fatal(err)
		}
		if h.SubsystemID != netfilter.NFSubsysCTNetlink || h.MessageType != ctMsgDelete || h.Family != nfFamily(fl.Family) {
			t.Errorf("header %v", h)
		}
		if m.Header.Flags&netlink.Acknowledge == 0 {
			t.Errorf("delete without ACK flag: errors would go unseen")
		}
		typ, got, err := decodeMessage(m)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if typ != EventDestroy {
			t.Errorf("type %v", typ)
		}
		if got.ID != fl.ID || got.Zone != fl.Zone || got.Protocol != fl.Protocol || got.Orig != fl.Orig || got.Family != fl.Family {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, fl)
		}
	}
}

func TestDeleteRequestRejectsMixedFamilies(t *testing.T) {
	fl := Flow{Family: model.IPv6, Protocol: ProtoUDP,
		Orig: Tuple{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("198.19.192.10")}}
	if _, err := deleteRequest(&fl); err == nil {
		t.Fatal("IPv4 addresses in an IPv6 flow accepted")
	}
	fl = Flow{Family: model.IPv4, Protocol: ProtoUDP}
	if _, err := deleteRequest(&fl); err == nil {
		t.Fatal("flow without addresses accepted")
	}
}

func TestDumpRequest(t *testing.T) {
	m, err := dumpRequest(model.IPv6, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, attrs, err := netfilter.UnmarshalNetlink(m)
	if err != nil {
		t.Fatal(err)
	}
	if h.Family != netfilter.ProtoIPv6 || h.MessageType != ctMsgGet || m.Header.Flags&netlink.Dump == 0 || len(attrs) != 0 {
		t.Fatalf("unfiltered dump: %v %v", h, attrs)
	}

	m, err = dumpRequest(model.IPv4, ProtoUDP)
	if err != nil {
		t.Fatal(err)
	}
	h, attrs, err = netfilter.UnmarshalNetlink(m)
	if err != nil {
		t.Fatal(err)
	}
	if h.Family != netfilter.ProtoIPv4 || len(attrs) != 2 {
		t.Fatalf("filtered dump: %v %v", h, attrs)
	}
	var proto uint8
	var flags uint32
	for _, a := range attrs {
		switch a.Type {
		case ctaTupleOrig:
			if len(a.Children) != 1 || a.Children[0].Type != ctaTupleProto || a.Children[0].Children[0].Type != ctaProtoNum {
				t.Fatalf("orig tuple %v", a)
			}
			proto = a.Children[0].Children[0].Data[0]
		case ctaFilter:
			if len(a.Children) != 1 || a.Children[0].Type != ctaFilterOrigFlags {
				t.Fatalf("filter %v", a)
			}
			flags = binary.NativeEndian.Uint32(a.Children[0].Data)
		}
	}
	if proto != ProtoUDP || flags != ctaFilterFlagProtoNum {
		t.Fatalf("proto %d flags %#x", proto, flags)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	m := netlink.Message{Data: []byte{1, 2}}
	if _, _, err := decodeMessage(m); err == nil {
		t.Fatal("short message decoded")
	}
}
