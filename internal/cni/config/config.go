// Package config parses, validates and defaults podnet's network
// configuration (the plugin's entry in a CNI conflist).
//
// It is pure: no kernel, no disk. Everything the plugin needs to know before
// it touches anything is decided here, so a bad config fails before any side
// effect (the containernetworking/plugins rule "validate before you act").
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults applied when a key is absent.
const (
	DefaultBridge  = "cbr0"
	DefaultMTU     = 1500
	DefaultDataDir = "/var/lib/cni/podnet"
)

// ErrDecode marks configs that are not valid JSON for podnet's schema (a
// key of the wrong type, say). The plugin maps it to CNI error code 6
// ("failed to decode content").
var ErrDecode = errors.New("cannot decode network config")

// ErrInvalid marks configs that decode but make no sense (a subnet that
// does not parse, a gateway outside its subnet). The plugin maps it to CNI
// error code 7 ("invalid network configuration").
var ErrInvalid = errors.New("invalid network config")

// Range is one address family's pod subnet on this node and the gateway
// address the node's bridge holds in it.
type Range struct {
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// Is6 reports whether the range is IPv6.
func (r Range) Is6() bool { return r.Subnet.Addr().Is6() }

// Config is a validated podnet network configuration with defaults applied.
type Config struct {
	// Plugin holds the standard CNI keys (name, cniVersion, prevResult,
	// valid attachments for GC) as the CNI library decoded them.
	Plugin types.PluginConf

	Bridge string
	MTU    int
	// Ranges has one entry per address family, IPv4 first.
	Ranges       []Range
	IPMasq       bool
	ClusterCIDRs []netip.Prefix
	DataDir      string
}

// NetworkDir is where this network's IPAM state lives: one directory per
// network name under DataDir, so two networks never share addresses files.
func (c *Config) NetworkDir() string { return filepath.Join(c.DataDir, c.Plugin.Name) }

// rawRange is one element of the "ranges" key.
type rawRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway,omitempty"`
}

// raw mirrors the JSON keys podnet defines on top of the standard ones.
type raw struct {
	types.PluginConf
	Bridge      string     `json:"bridge"`
	Subnet      string     `json:"subnet"`
	Gateway     string     `json:"gateway"`
	Ranges      []rawRange `json:"ranges"`
	MTU         *int       `json:"mtu"`
	IPMasq      bool       `json:"ipMasq"`
	ClusterCIDR string     `json:"clusterCIDR"`
	DataDir     string     `json:"dataDir"`
}

// knownKeys are the top-level keys podnet accepts: its own plus the ones the
// CNI spec and libcni put into a plugin's config. Anything else is reported,
// because a misspelt key ("subnett") silently ignored is the worst kind of
// failure to debug on a node.
var knownKeys = map[string]bool{
	// podnet's own
	"bridge": true, "subnet": true, "gateway": true, "ranges": true, "mtu": true,
	"ipMasq": true, "clusterCIDR": true, "dataDir": true,
	// CNI spec / libcni
	"cniVersion": true, "name": true, "type": true, "capabilities": true, "ipam": true,
	"dns": true, "args": true, "runtimeConfig": true, "prevResult": true,
	"cni.dev/valid-attachments": true, "cni.dev/attachments": true,
}

// Parse decodes and validates one plugin config (CNI stdin). Errors wrap
// ErrDecode or ErrInvalid and name the offending key and value.
func Parse(data []byte) (*Config, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecode, err)
	}
	var unknown []string
	for k := range keys {
		if !knownKeys[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("%w: unknown key(s) %s; podnet accepts bridge, subnet, gateway, ranges, mtu, ipMasq, clusterCIDR, dataDir",
			ErrInvalid, strings.Join(quoteAll(unknown), ", "))
	}

	var r raw
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecode, err)
	}
	return validate(&r)
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func validate(r *raw) (*Config, error) {
	c := &Config{
		Plugin:  r.PluginConf,
		Bridge:  r.Bridge,
		MTU:     DefaultMTU,
		IPMasq:  r.IPMasq,
		DataDir: r.DataDir,
	}
	if r.IPAM.Type != "" {
		return nil, invalid("\"ipam\" is set (type %q) but podnet has its own node-local IPAM; remove the \"ipam\" key", r.IPAM.Type)
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if err := ValidateIfName(c.Bridge); err != nil {
		return nil, invalid("bridge %q: %v", c.Bridge, err)
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return nil, invalid("dataDir %q must be an absolute path", c.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)

	ranges, err := parseRanges(r)
	if err != nil {
		return nil, err
	}
	c.Ranges = ranges

	if r.MTU != nil {
		c.MTU = *r.MTU
	}
	minMTU := 68
	for _, rg := range c.Ranges {
		if rg.Is6() {
			minMTU = 1280 // IPv6 requires links of at least 1280 bytes (RFC 8200).
		}
	}
	if c.MTU < minMTU || c.MTU > 65535 {
		return nil, invalid("mtu %d out of range [%d, 65535]", c.MTU, minMTU)
	}

	if r.ClusterCIDR != "" {
		for _, s := range strings.Split(r.ClusterCIDR, ",") {
			p, err := parseCanonicalPrefix(strings.TrimSpace(s))
			if err != nil {
				return nil, invalid("clusterCIDR %q: %v", r.ClusterCIDR, err)
			}
			c.ClusterCIDRs = append(c.ClusterCIDRs, p)
		}
	}
	for _, rg := range c.Ranges {
		fam := family(rg.Subnet)
		var sameFamily []netip.Prefix
		for _, cc := range c.ClusterCIDRs {
			if family(cc) == fam {
				sameFamily = append(sameFamily, cc)
			}
		}
		if len(sameFamily) == 0 {
			if c.IPMasq {
				return nil, invalid("ipMasq needs a clusterCIDR of family %s to tell cluster traffic from traffic leaving the cluster (pod subnet %s)", fam, rg.Subnet)
			}
			continue
		}
		inside := false
		for _, cc := range sameFamily {
			if cc.Bits() <= rg.Subnet.Bits() && cc.Contains(rg.Subnet.Addr()) {
				inside = true
			}
		}
		if !inside {
			return nil, invalid("pod subnet %s is not inside clusterCIDR %s", rg.Subnet, r.ClusterCIDR)
		}
	}
	return c, nil
}

func family(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseRanges reads "subnet"/"gateway" or "ranges" (exactly one form).
func parseRanges(r *raw) ([]Range, error) {
	var in []rawRange
	switch {
	case r.Subnet != "" && len(r.Ranges) > 0:
		return nil, invalid("set either \"subnet\" or \"ranges\", not both")
	case r.Subnet != "":
		in = []rawRange{{Subnet: r.Subnet, Gateway: r.Gateway}}
	case len(r.Ranges) > 0:
		if r.Gateway != "" {
			return nil, invalid("top-level \"gateway\" only goes with \"subnet\"; put it inside the entry of \"ranges\"")
		}
		in = r.Ranges
	default:
		return nil, invalid("no pod subnet: set \"subnet\" (e.g. \"198.18.1.0/24\") or \"ranges\"")
	}
	if len(in) > 2 {
		return nil, invalid("%d ranges given; at most one IPv4 and one IPv6 range", len(in))
	}
	var out []Range
	for i, rr := range in {
		rg, err := parseRange(rr)
		if err != nil {
			if len(r.Ranges) > 0 {
				return nil, invalid("ranges[%d]: %v", i, err)
			}
			return nil, invalid("%v", err)
		}
		for _, prev := range out {
			if prev.Is6() == rg.Is6() {
				return nil, invalid("two %s ranges (%s and %s); at most one per family", family(rg.Subnet), prev.Subnet, rg.Subnet)
			}
		}
		out = append(out, rg)
	}
	sort.SliceStable(out, func(i, j int) bool { return !out[i].Is6() && out[j].Is6() })
	return out, nil
}

func parseRange(rr rawRange) (Range, error) {
	if rr.Subnet == "" {
		return Range{}, fmt.Errorf("range has no \"subnet\"")
	}
	p, err := parseCanonicalPrefix(rr.Subnet)
	if err != nil {
		return Range{}, fmt.Errorf("subnet %q: %v", rr.Subnet, err)
	}
	// A pod subnet needs room for the network address, the gateway, at
	// least one pod and (IPv4) the broadcast address.
	if p.Addr().Is4() && p.Bits() > 30 {
		return Range{}, fmt.Errorf("subnet %s is too small: an IPv4 pod subnet needs at least a /30", p)
	}
	if p.Addr().Is6() && p.Bits() > 126 {
		return Range{}, fmt.Errorf("subnet %s is too small: an IPv6 pod subnet needs at least a /126", p)
	}
	first, last := Usable(p)
	rg := Range{Subnet: p, Gateway: first}
	if rr.Gateway != "" {
		gw, err := netip.ParseAddr(rr.Gateway)
		if err != nil {
			return Range{}, fmt.Errorf("gateway %q does not parse as an IP address", rr.Gateway)
		}
		if gw.Zone() != "" || gw.Is4In6() {
			return Range{}, fmt.Errorf("gateway %q: zones and IPv4-mapped IPv6 addresses are not allowed", rr.Gateway)
		}
		if !p.Contains(gw) {
			return Range{}, fmt.Errorf("gateway %s is outside subnet %s", gw, p)
		}
		if gw.Less(first) || last.Less(gw) {
			return Range{}, fmt.Errorf("gateway %s is the network or broadcast address of %s", gw, p)
		}
		rg.Gateway = gw
	}
	return rg, nil
}

// parseCanonicalPrefix parses a CIDR and insists on a network address, since
// "198.18.1.7/24" is almost always a typo for something else.
func parseCanonicalPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("does not parse as a CIDR (want e.g. 198.18.1.0/24 or 2001:db8:10:1::/64)")
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("zones and IPv4-mapped IPv6 prefixes are not allowed")
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("has host bits set; did you mean %s?", p.Masked())
	}
	return p, nil
}

// Usable returns the first and last address a pod or gateway may use in p:
// the network address is skipped, and for IPv4 so is the broadcast address.
func Usable(p netip.Prefix) (first, last netip.Addr) {
	first = p.Addr().Next()
	last = LastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	return first, last
}

// LastAddr is the highest address inside p.
func LastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

func setHostBits(b []byte, bits int) {
	for i := range b {
		switch {
		case bits >= 8:
			bits -= 8
		case bits <= 0:
			b[i] = 0xff
		default:
			b[i] |= 0xff >> bits
			bits = 0
		}
	}
}

// ValidateIfName applies the kernel's rules for interface names.
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name is %d bytes long; the kernel allows 15", len(name))
	case name == "." || name == "..":
		return errors.New("interface name may not be . or ..")
	case strings.ContainsAny(name, "/: \t\n"):
		return errors.New("interface name may not contain '/', ':' or whitespace")
	}
	return nil
}
