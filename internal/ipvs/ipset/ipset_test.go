package ipset

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/internal/model"
)

func TestParseEntry(t *testing.T) {
	cases := []struct {
		typ  Type
		fam  model.Family
		in   string
		want string // "" means an error
	}{
		{HashIP, model.IPv4, "198.19.192.10", "198.19.192.10"},
		{HashIP, model.IPv6, "2001:db8:20:0::a", "2001:db8:20::a"},
		{HashIP, model.IPv4, "2001:db8::1", ""},
		{HashIPPort, model.IPv4, "198.19.192.10,tcp:80", "198.19.192.10,tcp:80"},
		{HashIPPort, model.IPv4, "198.19.192.10,6:80", "198.19.192.10,tcp:80"},
		{HashIPPort, model.IPv4, "198.19.192.10,17:53", "198.19.192.10,udp:53"},
		{HashIPPort, model.IPv4, "198.19.192.10,132:3868", "198.19.192.10,sctp:3868"},
		{HashIPPort, model.IPv4, "198.19.192.10,icmp:0", ""},
		{HashIPPort, model.IPv4, "198.19.192.10,tcp:70000", ""},
		{HashIPPort, model.IPv4, "198.19.192.10", ""},
		{HashIPPortIP, model.IPv4, "198.18.1.2,tcp:8080,198.18.1.2", "198.18.1.2,tcp:8080,198.18.1.2"},
		{HashIPPortNet, model.IPv4, "203.0.113.1,tcp:80,198.51.100.7", "203.0.113.1,tcp:80,198.51.100.7/32"},
		{HashIPPortNet, model.IPv4, "203.0.113.1,tcp:80,198.51.100.77/24", "203.0.113.1,tcp:80,198.51.100.0/24"},
		{HashIPPortNet, model.IPv4, "203.0.113.1,tcp:80,0.0.0.0/0", ""},
		{HashIPPortNet, model.IPv6, "2001:db8:30::5,tcp:80,2001:db8:1::/64", "2001:db8:30::5,tcp:80,2001:db8:1::/64"},
		{BitmapPort, model.IPv4, "30080", "30080"},
		{BitmapPort, model.IPv4, "tcp:30080", ""},
		{Type("list:set"), model.IPv4, "x", ""},
	}
	for _, c := range cases {
		got, err := ParseEntry(c.typ, c.fam, c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("ParseEntry(%s, %q) = %q, want an error", c.typ, c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseEntry(%s, %q) = %q, %v; want %q", c.typ, c.in, got, err, c.want)
		}
	}
}

func TestConstructorsAreCanonical(t *testing.T) {
	a := netip.MustParseAddr("203.0.113.1")
	for _, c := range []struct {
		typ   Type
		entry string
	}{
		{HashIP, IP(a)},
		{HashIPPort, IPPort(a, model.SCTP, 9)},
		{HashIPPortIP, IPPortIP(a, model.UDP, 53, a)},
		{HashIPPortNet, IPPortNet(a, model.TCP, 80, netip.MustParsePrefix("198.51.100.9/24"))},
		{BitmapPort, Port(30000)},
	} {
		got, err := ParseEntry(c.typ, model.IPv4, c.entry)
		if err != nil || got != c.entry {
			t.Errorf("%s entry %q is not canonical: %q %v", c.typ, c.entry, got, err)
		}
	}
	for _, p := range []string{"0.0.0.0/0", "::/0", "10.0.0.0/8"} {
		for _, half := range SplitZero(netip.MustParsePrefix(p)) {
			if half.Bits() == 0 {
				t.Errorf("SplitZero(%s) kept a /0", p)
			}
		}
	}
}

// realSave is `ipset save` output of ipset 7.17 (with its bucketsize and
// initval extras, and numeric protocols as printed without /etc/protocols).
const realSave = `create KPR-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x50e6045d
add KPR-CLUSTER-IP 198.19.192.10,tcp:80
add KPR-CLUSTER-IP 198.19.192.11,6:81
create KPR-NODE-PORT-TCP bitmap:port range 0-65535
add KPR-NODE-PORT-TCP 30080
create KPR-6-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet6 hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1
add KPR-6-LOAD-BALANCER-SOURCE-CIDR 2001:db8:30::5,tcp:80,2001:db8:1::/64
add KPR-6-LOAD-BALANCER-SOURCE-CIDR 2001:db8:30::5,tcp:80,2001:db8:1::7
create OTHER list:set size 8
add OTHER KPR-CLUSTER-IP
create SKIPPED hash:ip family inet hashsize 1024 maxelem 65536
add SKIPPED 192.0.2.1
`

func TestParseSave(t *testing.T) {
	sets, err := Parse([]byte(realSave), func(n string) bool { return n != "SKIPPED" })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sets["SKIPPED"]; ok {
		t.Error("filtered set returned")
	}
	ci := sets["KPR-CLUSTER-IP"]
	if ci == nil || ci.Type != HashIPPort || ci.Family != model.IPv4 || ci.MaxElem != 1<<20 ||
		strings.Join(ci.Sorted(), " ") != "198.19.192.10,tcp:80 198.19.192.11,tcp:81" {
		t.Errorf("KPR-CLUSTER-IP: %+v", ci)
	}
	if !ci.Compatible(NewSet("KPR-CLUSTER-IP", HashIPPort, model.IPv4)) {
		t.Error("a set kpr made is not compatible with kpr's definition")
	}
	if ci.Compatible(NewSet("KPR-CLUSTER-IP", HashIPPort, model.IPv6)) || ci.Compatible(NewSet("KPR-CLUSTER-IP", HashIP, model.IPv4)) {
		t.Error("compatible across family or type")
	}
	cidr := sets["KPR-6-LOAD-BALANCER-SOURCE-CIDR"]
	if cidr.Family != model.IPv6 || !cidr.Has("2001:db8:30::5,tcp:80,2001:db8:1::7/128") {
		t.Errorf("IPv6 net set: %+v", cidr)
	}
	if np := sets["KPR-NODE-PORT-TCP"]; np == nil || !np.Has("30080") {
		t.Errorf("bitmap set: %+v", np)
	}
	if o := sets["OTHER"]; o == nil || len(o.Entries) != 0 {
		t.Errorf("unsupported type: %+v", o)
	}
	if _, err := Parse([]byte("create X hash:ip family inet\nadd X not-an-ip\n"), nil); err == nil {
		t.Error("bad entry parsed")
	}
}

func TestBatchWritesNumericProtocols(t *testing.T) {
	var b Batch
	s := NewSet("KPR-CLUSTER-IP", HashIPPort, model.IPv4)
	b.Create(s)
	b.Add(s.Name, "198.19.192.10,tcp:80")
	b.Add(s.Name, "198.19.192.10,udp:53")
	b.Del(s.Name, "198.19.192.10,sctp:9")
	b.Create(NewSet("KPR-NODE-PORT-TCP", BitmapPort, model.IPv4))
	b.Add("KPR-NODE-PORT-TCP", "30080")
	b.Flush("X")
	b.Destroy("X")
	want := `create KPR-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 1048576
add KPR-CLUSTER-IP 198.19.192.10,6:80
add KPR-CLUSTER-IP 198.19.192.10,17:53
del KPR-CLUSTER-IP 198.19.192.10,132:9
create KPR-NODE-PORT-TCP bitmap:port range 0-65535
add KPR-NODE-PORT-TCP 30080
flush X
destroy X
`
	if got := string(b.Bytes()); got != want || b.Lines() != 8 {
		t.Errorf("batch:\n%s\nwant:\n%s", got, want)
	}
	// What Save prints parses back to the same sets.
	s.Add("198.19.192.10,tcp:80")
	back, err := Parse(Save([]*Set{s}), nil)
	if err != nil || strings.Join(back[s.Name].Sorted(), " ") != "198.19.192.10,tcp:80" {
		t.Errorf("round trip: %v %v", back, err)
	}
}

func TestContextLines(t *testing.T) {
	got := ContextLines([]byte("a\nb\nc\nd\n"), 2, 1)
	if strings.Join(got, "|") != "1: a|2: b|3: c" {
		t.Errorf("ContextLines: %q", got)
	}
}
