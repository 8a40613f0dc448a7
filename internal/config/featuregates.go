package config

import (
	"fmt"
	"sort"
)

//go:generate go run gen_known_gates.go

type gateStage int

const (
	stageAlpha gateStage = iota
	stageBeta
	stageGA
	stageDeprecated
)

// gateSpec is how kube-proxy registers a gate (see known_gates.go).
type gateSpec struct {
	Default bool
	Locked  bool
	Stage   gateStage
}

// gateUse is what kpr does with a gate. The README's feature-gate table
// documents the same decisions; keep them in step.
type gateUse int

const (
	// gateIrrelevant: kube-proxy registers the gate but its proxying does
	// not read it; kpr ignores it too (warning when set to a non-default
	// value, so nothing is ignored silently).
	gateIrrelevant gateUse = iota
	// gateHonoured: kpr implements the gate.
	gateHonoured
	// gateOtherMode: read only by the nftables or Windows proxier; ignored
	// in iptables and ipvs mode, as kube-proxy ignores it there.
	gateOtherMode
	// gateNotImplemented: kube-proxy acts on it outside the proxy rules
	// (logging, metrics, API client); kpr does not. Warning when set to a
	// non-default value.
	gateNotImplemented
	// gateNoDifference: kube-proxy acts on it, kpr does not, but only the
	// default value differs from kpr's behaviour, which needs no warning
	// for an explicit setting (the README says what kpr does).
	gateNoDifference
)

// kprGate returns kpr's use of a gate and a note for warnings.
func kprGate(name string) (gateUse, string) {
	switch name {
	case "KubeProxyIPVS":
		return gateHonoured, "false disables the ipvs mode"
	case "AllowServiceExternalIPs":
		return gateHonoured, "false: no rules for Service externalIPs"
	case "PreferSameTrafficDistribution", "MultiCIDRServiceAllocator":
		// Locked to true in v1.37: only the default can be set.
		return gateHonoured, "locked on"
	case "KubeProxyNFTablesLocalhostNodePorts", "NFTablesNetlink":
		return gateOtherMode, "used only by kube-proxy's nftables mode"
	case "WinDSR", "WinOverlay":
		return gateOtherMode, "used only by kube-proxy on Windows"
	case "ComponentFlagz", "ComponentStatusz":
		return gateNoDifference, "kpr serves no /flagz or /statusz page"
	case "ContextualLogging", "LoggingAlphaOptions", "LoggingBetaOptions":
		return gateNotImplemented, "kpr's logger (zap) does not use Kubernetes' logging options"
	case "NativeHistograms":
		return gateNotImplemented, "kpr's metrics are classic Prometheus histograms"
	case "AtomicFIFO", "ClientsAllowCARotation", "ClientsAllowCBOR", "ClientsAllowTLSCacheGC",
		"ClientsPreferCBOR", "InOrderInformers", "InOrderInformersBatchProcess",
		"InformerResourceVersion", "UnlockWhileProcessingFIFO", "WatchListClient":
		return gateNotImplemented, "a client-go gate; kpr's client-go reads it from the environment variable KUBE_FEATURE_" + name
	}
	return gateIrrelevant, "has no effect on kube-proxy's iptables or ipvs proxying either"
}

// checkFeatureGates applies kube-proxy's gate rules (unknown gate or a
// locked gate set to another value is an error; setting a GA or deprecated
// gate is worth a warning) and kpr's own (kprGate). It returns the
// effective value of every gate kpr acts on.
func (b *builder) checkFeatureGates(gates map[string]bool) (features Features, ipvsAllowed bool) {
	features = Features{AllowServiceExternalIPs: true}
	ipvsAllowed = true

	names := make([]string, 0, len(gates))
	for name := range gates {
		names = append(names, name)
	}
	sort.Strings(names) // stable error and warning order
	for _, name := range names {
		value := gates[name]
		path := "featureGates." + name

		// The featuregate package's own switches.
		if name == "AllAlpha" || name == "AllBeta" {
			if value {
				b.warn(path, "enables every gate of that stage in kube-proxy; kpr implements none of the alpha or beta gates, so this changes nothing in kpr")
			}
			continue
		}

		spec, known := lookupKnownGate(name)
		if !known {
			b.fail(path, nil, fmt.Sprintf("unrecognized feature gate (kube-proxy %s rejects it too)", knownGatesRelease))
			continue
		}
		if spec.Locked && value != spec.Default {
			b.fail(path, value, fmt.Sprintf("cannot be set to %v: the gate is locked to %v in Kubernetes %s", value, spec.Default, knownGatesRelease))
			continue
		}
		switch spec.Stage {
		case stageGA:
			b.warn(path, "is a GA feature gate; it will be removed in a future release")
		case stageDeprecated:
			b.warn(path, "is a deprecated feature gate; it will be removed in a future release")
		}

		use, note := kprGate(name)
		switch use {
		case gateHonoured:
			switch name {
			case "KubeProxyIPVS":
				ipvsAllowed = value
			case "AllowServiceExternalIPs":
				features.AllowServiceExternalIPs = value
			}
		case gateOtherMode:
			if value != spec.Default {
				b.warn(path, "ignored: "+note)
			}
		case gateNotImplemented:
			if value != spec.Default {
				b.warn(path, fmt.Sprintf("not implemented by kpr, ignored (%s)", note))
			}
		case gateNoDifference:
			// Nothing to say: see kprGate.
		case gateIrrelevant:
			if value != spec.Default {
				b.warn(path, "ignored: "+note)
			}
		}
	}
	return features, ipvsAllowed
}
