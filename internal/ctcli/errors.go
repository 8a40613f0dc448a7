package ctcli

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// ErrPermission is what a kernel refusal (EPERM/EACCES from netlink)
// becomes: the conntrack table is readable only with CAP_NET_ADMIN.
var ErrPermission = errors.New("permission denied by the kernel: reading or changing the conntrack table needs root or CAP_NET_ADMIN " +
	"(run it with sudo on the node, or `kubectl exec` into the kpr pod on that node)")

// kernelError maps the errors the conntrack netlink boundary returns to
// plain advice; what stays unknown is passed through with context.
func kernelError(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES), errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: %w", what, ErrPermission)
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return fmt.Errorf("%s: the kernel has no conntrack netlink support (load it with `modprobe nf_conntrack_netlink`): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
