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
	"github.com/kpr-proxy/kpr/internal/model"
)

// Cleanup removes kpr's rules from both families and both iptables
// backends (so a node that switched backends is cleaned too). Chains of
// kube-proxy, kubelet or anyone else are never touched.
func Cleanup(ctx context.Context, log *zap.Logger) error {
	var errs []error
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
			if err := kpriptables.Cleanup(ctx, r, log); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", fam, backend, err))
			}
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
