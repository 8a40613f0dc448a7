package ipt

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Backend override values accepted by DetectBackend besides "legacy"/"nft".
const BackendAuto = "auto"

// kubeletHintChains are created by kubelet (1.17+) in the mangle table of the
// backend the node uses, precisely so that containers can tell.
var kubeletHintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// DetectBackend picks the iptables backend the node uses, the way
// kube-proxy's image (kubernetes-sigs/iptables-wrappers) does:
//
//  1. override "legacy" or "nft" wins ("" and "auto" detect);
//  2. a kubelet hint chain (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) in the
//     mangle table of exactly one backend selects it (both families are
//     looked at: kubelet writes the hint in each, and a node uses one
//     backend);
//  3. otherwise the backend whose iptables-save shows more rules (plus
//     KUBE-* chains) wins;
//  4. a tie goes to the mode `iptables --version` reports as the system
//     default, or nft if that is unknown.
//
// Only full `-save` runs are used: `iptables-legacy-save -t mangle` would
// create the legacy mangle table as a side effect. The choice and its reason
// are logged; missing binaries give an error naming the package to install.
func DetectBackend(ctx context.Context, family model.Family, override string, logger *zap.Logger) (Backend, string, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	b, reason, err := detectBackend(ctx, family, override)
	if err != nil {
		return "", "", err
	}
	logger.Info("selected iptables backend",
		zap.String("ip_family", family.String()),
		zap.String("iptables_backend", string(b)),
		zap.String("reason", reason))
	return b, reason, nil
}

func detectBackend(ctx context.Context, family model.Family, override string) (Backend, string, error) {
	if family != model.IPv4 && family != model.IPv6 {
		return "", "", fmt.Errorf("ipt: invalid IP family %v", family)
	}
	switch strings.ToLower(strings.TrimSpace(override)) {
	case string(BackendLegacy):
		if _, err := findBinaries(family, BackendLegacy, ""); err != nil {
			return "", "", err
		}
		return BackendLegacy, "configured explicitly", nil
	case string(BackendNFT):
		if _, err := findBinaries(family, BackendNFT, ""); err != nil {
			return "", "", err
		}
		return BackendNFT, "configured explicitly", nil
	case "", BackendAuto:
	default:
		return "", "", fmt.Errorf("ipt: invalid iptables backend %q: want %q, %q or %q", override, BackendAuto, BackendLegacy, BackendNFT)
	}

	obs := map[Backend]*backendObservation{BackendLegacy: {}, BackendNFT: {}}
	// The requested family first, so its hint is the one named in the reason.
	other := model.IPv6
	if family == model.IPv6 {
		other = model.IPv4
	}
	families := []model.Family{family, other}
	for _, b := range []Backend{BackendLegacy, BackendNFT} {
		o := obs[b]
		for _, f := range families {
			bins, err := findBinaries(f, b, "")
			if err != nil {
				if f == family {
					o.missing = err
				}
				continue
			}
			out, err := exec.CommandContext(ctx, bins.save).Output()
			if err != nil {
				if f == family {
					o.missing = fmt.Errorf("%s: %w", bins.save, err)
				}
				continue
			}
			s := summarizeSave(out)
			if o.hint == "" && s.hint != "" {
				o.hint = fmt.Sprintf("%s in %v mangle table", s.hint, f)
			}
			o.rules += s.rules
		}
	}
	sysDefault, sysVersion := Backend(""), ""
	if bins, err := exec.LookPath(familyBase(family)); err == nil {
		if mode, line, err := toolMode(ctx, bins); err == nil {
			sysDefault, sysVersion = mode, line
		}
	}
	return decideBackend(*obs[BackendLegacy], *obs[BackendNFT], sysDefault, sysVersion)
}

// backendObservation is what detection learnt about one backend.
type backendObservation struct {
	missing error  // tools missing or not working for the requested family
	hint    string // description of a kubelet hint chain found, or ""
	rules   int    // rules and KUBE-* chains over both families
}

// decideBackend is the pure decision of DetectBackend.
func decideBackend(legacy, nft backendObservation, sysDefault Backend, sysVersion string) (Backend, string, error) {
	switch {
	case legacy.missing != nil && nft.missing != nil:
		return "", "", fmt.Errorf("ipt: no usable iptables found (legacy: %v; nft: %v)", legacy.missing, nft.missing)
	case legacy.missing != nil:
		return BackendNFT, fmt.Sprintf("only the nft iptables tools work (legacy: %v)", legacy.missing), nil
	case nft.missing != nil:
		return BackendLegacy, fmt.Sprintf("only the legacy iptables tools work (nft: %v)", nft.missing), nil
	}
	switch {
	case legacy.hint != "" && nft.hint == "":
		return BackendLegacy, "kubelet hint chain " + legacy.hint + " of iptables-legacy", nil
	case nft.hint != "" && legacy.hint == "":
		return BackendNFT, "kubelet hint chain " + nft.hint + " of iptables-nft", nil
	}
	prefix := "no kubelet hint chain"
	if legacy.hint != "" {
		prefix = "kubelet hint chains in both backends"
	}
	switch {
	case legacy.rules > nft.rules:
		return BackendLegacy, fmt.Sprintf("%s; iptables-legacy has more rules (%d vs %d)", prefix, legacy.rules, nft.rules), nil
	case nft.rules > legacy.rules:
		return BackendNFT, fmt.Sprintf("%s; iptables-nft has more rules (%d vs %d)", prefix, nft.rules, legacy.rules), nil
	}
	if sysDefault != "" {
		return sysDefault, fmt.Sprintf("%s; both backends have %d rules; system default is %s (%s)", prefix, legacy.rules, sysDefault, sysVersion), nil
	}
	return BackendNFT, fmt.Sprintf("%s; both backends have %d rules; no system default known, using nft", prefix, legacy.rules), nil
}

type saveSummary struct {
	hint  string // first kubelet hint chain found in mangle
	rules int    // -A lines plus KUBE-* chain declarations
}

// summarizeSave reads full iptables-save output.
func summarizeSave(out []byte) saveSummary {
	var s saveSummary
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "-A "):
			s.rules++
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if strings.HasPrefix(name, "KUBE-") {
				s.rules++
			}
			if table == "mangle" && s.hint == "" {
				for _, h := range kubeletHintChains {
					if name == h {
						s.hint = h
					}
				}
			}
		}
	}
	return s
}
