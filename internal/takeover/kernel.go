package takeover

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
)

// The kernel boundaries of the takeover. Each has a stateful fake in
// internal/takeover/testing.

// Tables is iptables of one IP family and backend: the proxy's ipt.Interface
// plus a full save.
type Tables interface {
	ipt.Interface
	// SaveAll returns `iptables-save` output without -t: every table that
	// exists, and no table created (`iptables-legacy-save -t nat` would
	// create the legacy nat table, and load its module, on a node that
	// never used legacy).
	SaveAll(ctx context.Context) ([]byte, error)
}

// IPVS lists and deletes IPVS virtual servers.
type IPVS interface {
	VirtualServers() ([]VirtualServer, error)
	DeleteVirtualServer(VirtualServer) error
}

// Links looks at and deletes network links.
type Links interface {
	// Link returns the kind ("dummy", "veth", ...) and addresses of the
	// link called name; found is false if there is none.
	Link(name string) (kind string, addrs []netip.Addr, found bool, err error)
	DeleteLink(name string) error
}

// IPSets lists, reads and destroys ipsets.
type IPSets interface {
	List(ctx context.Context) ([]string, error)
	// Members returns the entries of a set as `ipset save` prints them
	// after "add NAME ".
	Members(ctx context.Context, name string) ([]string, error)
	Destroy(ctx context.Context, name string) error
}

// NFTables lists and deletes nftables tables.
type NFTables interface {
	Tables(ctx context.Context) ([]NFTable, error)
	DeleteTable(ctx context.Context, t NFTable) error
}

// ---- iptables ----

// iptTables is Tables over the iptables binaries.
type iptTables struct {
	*ipt.Runner
	save string
}

// NewTables returns Tables for one family and backend, or an error when the
// backend's tools are not installed.
func NewTables(f model.Family, b ipt.Backend, log *zap.Logger) (Tables, error) {
	save, err := exec.LookPath(ipTool(f) + "-" + string(b) + "-save")
	if err != nil {
		return nil, err
	}
	r, err := ipt.New(ipt.Config{Family: f, Backend: b, Logger: log})
	if err != nil {
		return nil, err
	}
	return &iptTables{Runner: r, save: save}, nil
}

func (t *iptTables) SaveAll(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, t.save)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", t.save, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ---- IPVS (moby/ipvs over generic netlink) ----

type mobyIPVS struct {
	h *mobyipvs.Handle
	// orig keeps the kernel's view of each listed server, so a delete
	// sends back exactly what was read.
	mu   sync.Mutex
	orig map[VirtualServer]*mobyipvs.Service
}

// NewIPVS opens IPVS in the current network namespace. It fails when the
// kernel has no IPVS (no ip_vs module), which means kube-proxy's ipvs mode
// cannot have left anything either.
//
// The check is /proc/net/ip_vs, which exists while the ip_vs module is
// loaded: moby/ipvs itself neither fails without IPVS (it logs and then
// answers every request with nothing) nor leaves the node alone (it runs
// `modprobe ip_vs`), and a kube-proxy in ipvs mode always has it loaded.
func NewIPVS() (IPVS, error) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return nil, fmt.Errorf("the ip_vs module is not loaded: %w", err)
	}
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, err
	}
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, err
	}
	return &mobyIPVS{h: h, orig: map[VirtualServer]*mobyipvs.Service{}}, nil
}

func ipvsProto(p uint16) string {
	switch p {
	case syscall.IPPROTO_TCP:
		return "TCP"
	case syscall.IPPROTO_UDP:
		return "UDP"
	case syscall.IPPROTO_SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}

func (m *mobyIPVS) VirtualServers() ([]VirtualServer, error) {
	svcs, err := m.h.GetServices()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		a, _ := netip.AddrFromSlice(s.Address)
		v := VirtualServer{Protocol: ipvsProto(s.Protocol), Address: a.Unmap(), Port: s.Port, FWMark: s.FWMark}
		m.orig[v] = s
		out = append(out, v)
	}
	return out, nil
}

func (m *mobyIPVS) DeleteVirtualServer(v VirtualServer) error {
	m.mu.Lock()
	s := m.orig[v]
	m.mu.Unlock()
	if s == nil {
		return fmt.Errorf("IPVS virtual server %s was not listed", v)
	}
	return m.h.DelService(s)
}

// ---- links (netlink) ----

type netlinkLinks struct{}

// NewLinks returns Links for the current network namespace.
func NewLinks() Links { return netlinkLinks{} }

func (netlinkLinks) Link(name string) (string, []netip.Addr, bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return "", nil, false, nil
		}
		return "", nil, false, err
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return "", nil, false, err
	}
	var addrs []netip.Addr
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			addrs = append(addrs, ip.Unmap())
		}
	}
	return l.Type(), addrs, true, nil
}

func (netlinkLinks) DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

// ---- ipset (the ipset tool) ----

type ipsetTool struct{ bin string }

// NewIPSets returns IPSets using the ipset binary, or an error when it is
// not installed (kube-proxy's ipvs mode cannot have run without it).
func NewIPSets() (IPSets, error) {
	bin, err := exec.LookPath("ipset")
	if err != nil {
		return nil, err
	}
	return ipsetTool{bin: bin}, nil
}

func runTool(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func (s ipsetTool) List(ctx context.Context) ([]string, error) {
	out, err := runTool(ctx, s.bin, "list", "-n")
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

func (s ipsetTool) Members(ctx context.Context, name string) ([]string, error) {
	out, err := runTool(ctx, s.bin, "save", name)
	if err != nil {
		return nil, err
	}
	var members []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "add" && f[1] == name {
			members = append(members, f[2])
		}
	}
	return members, sc.Err()
}

func (s ipsetTool) Destroy(ctx context.Context, name string) error {
	_, err := runTool(ctx, s.bin, "destroy", name)
	return err
}

// ---- nftables (the nft tool) ----

type nftTool struct{ bin string }

// NewNFTables returns NFTables using the nft binary, or an error when it is
// not installed (kube-proxy's nftables mode cannot have run without it).
func NewNFTables() (NFTables, error) {
	bin, err := exec.LookPath("nft")
	if err != nil {
		return nil, err
	}
	return nftTool{bin: bin}, nil
}

func (n nftTool) Tables(ctx context.Context) ([]NFTable, error) {
	out, err := runTool(ctx, n.bin, "list", "tables")
	if err != nil {
		return nil, err
	}
	var tables []NFTable
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" {
			tables = append(tables, NFTable{Family: f[1], Name: f[2]})
		}
	}
	return tables, nil
}

func (n nftTool) DeleteTable(ctx context.Context, t NFTable) error {
	_, err := runTool(ctx, n.bin, "delete", "table", t.Family, t.Name)
	return err
}
