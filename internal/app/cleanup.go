package app

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/config"
	kpriptables "github.com/kpr-proxy/kpr/internal/iptables"
	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Cleanup removes what kpr created in either mode, from both families and
// both iptables backends (so a node that switched backends or modes is
// cleaned too): IPVS virtual servers (not those in --ipvs-exclude-cidrs),
// kpr's ipsets and link, then every KPR- chain and its jumps. Chains of
// kube-proxy, kubelet or anyone else are never touched.
func Cleanup(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	var errs []error
	var ipts []ipt.Interface
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, backend := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			bin := "iptables-" + string(backend) + "-restore"
			if fam == model.IPv6 {
				bin = "ip6tables-" + string(backend) + "-restore"
			}
			if _, err := exec.LookPath(bin); err != nil {
				continue
			}
			r, err := ipt.New(ipt.Config{Family: fam, Backend: backend, Logger: log.Named("ipt")})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", fam, backend, err))
				continue
			}
			ipts = append(ipts, r)
		}
	}

	// IPVS mode's objects first: its chains have jumps of their own that
	// the iptables cleanup below does not know.
	cc := ipvs.CleanupConfig{IPTs: ipts, Links: &kernel.NetlinkLinks{}, ExcludeCIDRs: cfg.IPVS.ExcludeCIDRs, Logger: log.Named("ipvs")}
	if h, err := kernel.NewHandle(""); err == nil {
		cc.IPVS = h
	} else if !errors.Is(err, kernel.ErrNoIPVS) {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}
	if set, err := ipset.NewRunner(ipset.Config{}); err == nil {
		cc.IPSet = set
	}
	if err := ipvs.Cleanup(ctx, cc); err != nil {
		errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
	}

	for _, r := range ipts {
		if err := kpriptables.Cleanup(ctx, r, log); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", r.Family(), r.Backend(), err))
		}
	}
	return errors.Join(errs...)
}

// InitOnly does the privileged node setup (conntrack sysctls, OOM score)
// and exits, like kube-proxy --init-only in an init container.
func InitOnly(cfg *config.Config, log *zap.Logger) error {
	applyOOMScoreAdj(cfg.OOMScoreAdj, log)
	return applyConntrackSysctls(cfg, log)
}
