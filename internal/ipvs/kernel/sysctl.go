package kernel

import (
	"os"
	"path/filepath"
	"strings"
)

// ProcSysctl implements Sysctl with /proc/sys. Network sysctls are per
// network namespace: they apply to the namespace of the calling thread.
type ProcSysctl struct {
	// Root is "/proc/sys" when empty.
	Root string
}

var _ Sysctl = ProcSysctl{}

func (p ProcSysctl) path(name string) string {
	root := p.Root
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(root, filepath.Clean("/"+name))
}

func (p ProcSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(p.path(name))
	return strings.TrimSpace(string(b)), err
}

func (p ProcSysctl) Set(name, value string) error {
	return os.WriteFile(p.path(name), []byte(value), 0o644)
}
