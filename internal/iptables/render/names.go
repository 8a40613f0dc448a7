package render

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Prefix is the prefix of every chain kpr creates. It is deliberately not
// "KUBE-": kpr must be able to run next to kube-proxy (during a takeover) and
// next to kubelet without either side touching the other's chains.
const Prefix = "KPR-"

// Fixed chains.
const (
	ChainServices         = Prefix + "SERVICES"          // nat + filter
	ChainNodePorts        = Prefix + "NODEPORTS"         // nat + filter
	ChainPostrouting      = Prefix + "POSTROUTING"       // nat
	ChainMarkMasq         = Prefix + "MARK-MASQ"         // nat
	ChainExternalServices = Prefix + "EXTERNAL-SERVICES" // filter
	ChainForward          = Prefix + "FORWARD"           // filter
	ChainFirewall         = Prefix + "FIREWALL"          // filter: loadBalancerSourceRanges drops
	ChainLocalnet         = Prefix + "LOCALNET"          // filter: CVE-2020-8558 guard
)

// Per-Service and per-endpoint chain prefixes. Every name is the prefix plus
// 16 base32 characters of a SHA-256, so names stay within iptables'
// 28-character limit (the longest, "KPR-DST-" + 16, is 24).
const (
	prefixSVC = Prefix + "SVC-" // Cluster traffic policy endpoints
	prefixSVL = Prefix + "SVL-" // Local traffic policy endpoints
	prefixEXT = Prefix + "EXT-" // external destinations (NodePort, LB, external IPs)
	prefixFW  = Prefix + "FW-"  // loadBalancerSourceRanges
	prefixSEP = Prefix + "SEP-" // one endpoint (DNAT)
	prefixDST = Prefix + "DST-" // dispatch tree node keyed by destination prefix
)

// MaxChainNameLen is iptables' limit (XT_EXTENSION_MAXNAMELEN - 1 = 28).
const MaxChainNameLen = 28

func hash16(parts ...string) string {
	var buf [256]byte
	in := buf[:0]
	for _, p := range parts {
		in = append(in, p...)
	}
	sum := sha256.Sum256(in)
	// 10 bytes of hash encode to exactly 16 base32 characters, the same
	// characters as the first 16 of the whole hash's encoding.
	var out [16]byte
	base32.StdEncoding.Encode(out[:], sum[:10])
	return string(out[:])
}

// serviceChains holds the names of one Service port's chains. They depend
// only on the Service port's name and protocol, exactly as in kube-proxy, so
// that a chain keeps its name for the life of the Service port.
type serviceChains struct {
	svc, svl, ext, fw string
}

func chainsFor(name model.ServicePortName) serviceChains {
	h := hash16(name.String(), name.Protocol.Lower())
	return serviceChains{svc: prefixSVC + h, svl: prefixSVL + h, ext: prefixEXT + h, fw: prefixFW + h}
}

// endpointChain is the KPR-SEP chain of one endpoint of one Service port.
func endpointChain(name model.ServicePortName, ep *model.Endpoint) string {
	return prefixSEP + hash16(name.String(), name.Protocol.Lower(), ep.String())
}

// IsOurs reports whether a chain name belongs to kpr.
func IsOurs(chain string) bool { return strings.HasPrefix(chain, Prefix) }

// isGenerated reports whether a chain is one of the per-Service, per-endpoint
// or dispatch chains that syncs create and delete (as opposed to the fixed
// chains that always exist while kpr runs).
func isGenerated(chain string) bool {
	for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW, prefixSEP, prefixDST} {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// ServiceChains returns the names of a Service port's own chains
// (KPR-SVC, KPR-SVL, KPR-EXT, KPR-FW; not all exist for every Service).
func ServiceChains(name model.ServicePortName) []string {
	c := chainsFor(name)
	return []string{c.svc, c.svl, c.ext, c.fw}
}
