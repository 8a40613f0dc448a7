// Package install does a CNI DaemonSet's install step: render the node's
// conflist from its pod CIDRs and write it atomically, and copy the plugin
// binary into the CNI bin directory atomically.
//
// Atomic matters: the runtime (containerd, CRI-O) watches /etc/cni/net.d and
// execs whatever is in /opt/cni/bin; a half-written file there is a node
// that cannot start pods.
package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/kpr-proxy/kpr/internal/cni/config"
)

// ConflistConfig describes the conflist to write.
type ConflistConfig struct {
	// Name is the network name; default "podnet".
	Name string
	// CNIVersion of the conflist; default "1.0.0" (runtimes whose libcni
	// predates 1.1.0 cannot read 1.1.0 results).
	CNIVersion string
	// PodCIDRs is the node's spec.podCIDRs (one per family).
	PodCIDRs     []netip.Prefix
	Bridge       string
	MTU          int
	IPMasq       bool
	ClusterCIDRs []netip.Prefix
	DataDir      string
}

type rangeJSON struct {
	Subnet string `json:"subnet"`
}

type pluginJSON struct {
	Type        string      `json:"type"`
	Bridge      string      `json:"bridge,omitempty"`
	Subnet      string      `json:"subnet,omitempty"`
	Ranges      []rangeJSON `json:"ranges,omitempty"`
	MTU         int         `json:"mtu,omitempty"`
	IPMasq      bool        `json:"ipMasq,omitempty"`
	ClusterCIDR string      `json:"clusterCIDR,omitempty"`
	DataDir     string      `json:"dataDir,omitempty"`
}

type conflistJSON struct {
	CNIVersion string       `json:"cniVersion"`
	Name       string       `json:"name"`
	Plugins    []pluginJSON `json:"plugins"`
}

// Conflist renders the conflist and checks it with the plugin's own config
// parser, so what is written is what ADD will accept.
func Conflist(c ConflistConfig) ([]byte, error) {
	if c.Name == "" {
		c.Name = "podnet"
	}
	if c.CNIVersion == "" {
		c.CNIVersion = "1.0.0"
	}
	if len(c.PodCIDRs) == 0 {
		return nil, errors.New("no pod CIDR")
	}
	p := pluginJSON{Type: "podnet", Bridge: c.Bridge, MTU: c.MTU, IPMasq: c.IPMasq, DataDir: c.DataDir}
	if len(c.PodCIDRs) == 1 {
		p.Subnet = c.PodCIDRs[0].String()
	} else {
		for _, pc := range c.PodCIDRs {
			p.Ranges = append(p.Ranges, rangeJSON{Subnet: pc.String()})
		}
	}
	var cc []string
	for _, x := range c.ClusterCIDRs {
		cc = append(cc, x.String())
	}
	p.ClusterCIDR = strings.Join(cc, ",")
	list := conflistJSON{CNIVersion: c.CNIVersion, Name: c.Name, Plugins: []pluginJSON{p}}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	// Validate the plugin entry as the plugin will see it.
	entry, _ := json.Marshal(struct {
		pluginJSON
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
	}{p, c.CNIVersion, c.Name})
	if _, err := config.Parse(entry); err != nil {
		return nil, fmt.Errorf("rendered conflist is not valid podnet config: %w", err)
	}
	return append(out, '\n'), nil
}

// WriteFileAtomic writes data to path via a temporary file in the same
// directory and rename(2). It does nothing (changed=false) when the file
// already has exactly that content and mode.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == perm {
			return false, nil
		}
	}
	return true, writeAtomic(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

func writeAtomic(path string, perm os.FileMode, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The dot prefix keeps runtimes that scan the directory (for *.conflist
	// or executables) from picking up the temporary file.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// InstallBinary copies src to dir/name (mode 0755) atomically. Replacing a
// binary that runs is fine with rename: running processes keep the old
// inode. It does nothing when the target already has the same content.
func InstallBinary(src, dir, name string) (changed bool, err error) {
	dst := filepath.Join(dir, name)
	same, err := sameContent(src, dst)
	if err != nil {
		return false, err
	}
	if same {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	return true, writeAtomic(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

func sameContent(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if sa.Size() != sb.Size() {
		return false, nil
	}
	da, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	db, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(da, db), nil
}
