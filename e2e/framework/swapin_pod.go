package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// HostPodSpec says which container of a host-network Pod template (e.g. a
// DaemonSet's, as the apiserver returned it) to run on a node, the way a
// kubelet would run it there — without a container runtime or image.
type HostPodSpec struct {
	// Name names the process and its log ("<Name>-<node>"); required.
	Name string
	// Namespace is the Pod's namespace (for ConfigMap volumes and the
	// ServiceAccount token).
	Namespace string
	Template  corev1.PodTemplateSpec
	// Container is the container to run; default: the first.
	Container string
	// Binaries maps a program path inside the image (command[0], e.g.
	// "/proxy") to a local binary (bin/proxy). Unmapped programs are an
	// error: there is no image.
	Binaries map[string]string
	// ExtraArgs are appended to the container's command and args.
	ExtraArgs []string
	// Env is added to the process environment (e.g. IPTablesBackendEnv),
	// before the container's own env.
	Env []string
}

// StartHostPod runs a Pod template's container in node i's namespace as a
// kubelet would for a hostNetwork Pod: $(VAR) references in command and args
// expanded from the container's env (literal values and the fieldRefs
// spec.nodeName, metadata.namespace, metadata.name, status.hostIP); ConfigMap
// volumes filled from the live ConfigMaps and hostPath volumes mounted at
// their mountPaths; the ServiceAccount's token (TokenRequest), the cluster CA
// and the namespace at /var/run/secrets/kubernetes.io/serviceaccount. The
// mounts live in a private mount namespace of the process only: where a
// mountPath does not exist on the machine, its nearest existing ancestor is
// covered by a tmpfs (for this process only) and the path made there, so the
// machine's file system is never changed. The process is stopped when the
// test ends.
func (c *Cluster) StartHostPod(t testing.TB, node int, spec HostPodSpec) *Proxy {
	t.Helper()
	n := c.Node(node)
	argv, env, err := c.hostPodCommand(context.Background(), n, spec)
	if err != nil {
		t.Fatalf("host pod %s on %s: %v", spec.Name, n.Name, err)
	}
	proc, err := c.startProcess(ProcessSpec{Name: spec.Name + "-" + n.Name, NS: n.NetNS, Argv: argv, Env: append(append([]string{}, spec.Env...), env...)})
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Process: proc, Node: n}
	t.Cleanup(func() { _ = p.Process.Stop(5 * time.Second) })
	return p
}

// hostMount is one bind mount of the emulated Pod.
type hostMount struct {
	source   string // file or directory on the machine
	target   string // path inside the process's mount namespace
	readOnly bool
}

func (c *Cluster) hostPodCommand(ctx context.Context, n *Node, spec HostPodSpec) (argv, env []string, err error) {
	if spec.Name == "" || spec.Namespace == "" {
		return nil, nil, errors.New("HostPodSpec needs Name and Namespace")
	}
	ps := spec.Template.Spec
	if !ps.HostNetwork {
		return nil, nil, errors.New("only hostNetwork Pods can run in a node namespace")
	}
	var ctr *corev1.Container
	for i := range ps.Containers {
		if spec.Container == "" || ps.Containers[i].Name == spec.Container {
			ctr = &ps.Containers[i]
			break
		}
	}
	if ctr == nil {
		return nil, nil, fmt.Errorf("no container %q", spec.Container)
	}
	dir := filepath.Join(c.RunDir, "pods", spec.Name+"-"+n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}

	vars := map[string]string{}
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				return nil, nil, fmt.Errorf("env %s: only fieldRef sources are supported", e.Name)
			}
			switch e.ValueFrom.FieldRef.FieldPath {
			case "spec.nodeName":
				v = n.Name
			case "metadata.namespace":
				v = spec.Namespace
			case "metadata.name":
				v = spec.Name + "-" + n.Name
			case "status.hostIP":
				v = n.IPv4.String()
			default:
				return nil, nil, fmt.Errorf("env %s: fieldRef %s not supported", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		} else {
			v = expandVars(v, vars)
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}

	// Volumes.
	sources := map[string]string{}
	for _, v := range ps.Volumes {
		switch {
		case v.ConfigMap != nil:
			cm, err := c.Client.CoreV1().ConfigMaps(spec.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			vdir := filepath.Join(dir, "volumes", v.Name)
			if err := os.MkdirAll(vdir, 0o755); err != nil {
				return nil, nil, err
			}
			items := v.ConfigMap.Items
			if len(items) == 0 {
				for k := range cm.Data {
					items = append(items, corev1.KeyToPath{Key: k, Path: k})
				}
			}
			for _, it := range items {
				data, ok := cm.Data[it.Key]
				if !ok {
					return nil, nil, fmt.Errorf("volume %s: ConfigMap %s has no key %s", v.Name, cm.Name, it.Key)
				}
				if err := os.WriteFile(filepath.Join(vdir, it.Path), []byte(data), 0o644); err != nil {
					return nil, nil, err
				}
			}
			sources[v.Name] = vdir
		case v.HostPath != nil:
			p := v.HostPath.Path
			if _, err := os.Stat(p); err != nil {
				var typ corev1.HostPathType
				if v.HostPath.Type != nil {
					typ = *v.HostPath.Type
				}
				// As a kubelet would; the only such path in our manifests is
				// /run/xtables.lock, which iptables creates itself anyway.
				switch typ {
				case corev1.HostPathUnset:
					// No check requested; a machine without the path
					// (/lib/modules in a container) just has nothing to
					// mount there.
					continue
				case corev1.HostPathFileOrCreate:
					f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o600)
					if err != nil {
						return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
					}
					f.Close()
				default:
					return nil, nil, fmt.Errorf("volume %s: hostPath %s: %w", v.Name, p, err)
				}
			}
			sources[v.Name] = p
		default:
			return nil, nil, fmt.Errorf("volume %s: only configMap and hostPath volumes are supported", v.Name)
		}
	}
	var mounts []hostMount
	for _, m := range ctr.VolumeMounts {
		src, ok := sources[m.Name]
		if !ok {
			if hostPathVolume(ps, m.Name) {
				continue // skipped above: not on this machine
			}
			return nil, nil, fmt.Errorf("volumeMount %s: no such volume", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
		}
		mounts = append(mounts, hostMount{source: src, target: m.MountPath, readOnly: m.ReadOnly})
	}
	if sa := ps.ServiceAccountName; sa != "" && (ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken) {
		tr, err := c.Client.CoreV1().ServiceAccounts(spec.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64((24 * time.Hour).Seconds()))},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("token for ServiceAccount %s/%s: %w", spec.Namespace, sa, err)
		}
		sadir := filepath.Join(dir, "serviceaccount")
		if err := os.MkdirAll(sadir, 0o755); err != nil {
			return nil, nil, err
		}
		for name, data := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": c.pki.CAPEM, "namespace": []byte(spec.Namespace)} {
			if err := os.WriteFile(filepath.Join(sadir, name), data, 0o600); err != nil {
				return nil, nil, err
			}
		}
		mounts = append(mounts, hostMount{source: sadir, target: "/var/run/secrets/kubernetes.io/serviceaccount", readOnly: true})
	}

	cmd := append(append(append([]string{}, ctr.Command...), ctr.Args...), spec.ExtraArgs...)
	if len(cmd) == 0 {
		return nil, nil, errors.New("container has no command (image entrypoints are not known here)")
	}
	for i := range cmd {
		cmd[i] = expandVars(cmd[i], vars)
	}
	bin, ok := spec.Binaries[cmd[0]]
	if !ok {
		return nil, nil, fmt.Errorf("no local binary for the image's %s (HostPodSpec.Binaries)", cmd[0])
	}
	cmd[0] = bin

	script, err := mountScript(filepath.Join(dir, "host"), mounts)
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "mounts.sh"), []byte(script), 0o644); err != nil {
		return nil, nil, err
	}
	argv = append([]string{"unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, spec.Name}, cmd...)
	return argv, env, nil
}

func hostPathVolume(ps corev1.PodSpec, name string) bool {
	for _, v := range ps.Volumes {
		if v.Name == name && v.HostPath != nil {
			return true
		}
	}
	return false
}

// expandVars does the kubelet's $(VAR) expansion: defined variables are
// replaced, $$ is a literal $, anything else stays as written.
func expandVars(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i:], ')')
			if end < 0 {
				b.WriteByte(s[i])
				continue
			}
			name := s[i+2 : i+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+end+1])
			}
			i += end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// mountScript builds the shell script run in the private mount namespace:
// host sources are first bind-mounted under keep (so covering a directory
// with a tmpfs cannot hide them), then missing mount points' nearest
// existing ancestors are covered by a tmpfs, then every mount point is made
// and bound. It ends with exec "$@".
func mountScript(keep string, mounts []hostMount) (string, error) {
	var b strings.Builder
	b.WriteString("set -e\n")
	overlays := map[string]bool{}
	for _, m := range mounts {
		if _, err := os.Lstat(m.target); err == nil {
			continue
		}
		anc := filepath.Dir(m.target)
		for {
			if _, err := os.Lstat(anc); err == nil {
				break
			}
			anc = filepath.Dir(anc)
		}
		real, err := filepath.EvalSymlinks(anc)
		if err != nil {
			return "", err
		}
		if real == "/" {
			return "", fmt.Errorf("mountPath %s: would have to cover / with a tmpfs", m.target)
		}
		if strings.HasPrefix(keep+"/", real+"/") {
			return "", fmt.Errorf("mountPath %s: covering %s would hide the run directory", m.target, real)
		}
		overlays[real] = true
	}
	isDir := make([]bool, len(mounts))
	for i, m := range mounts {
		fi, err := os.Stat(m.source)
		if err != nil {
			return "", fmt.Errorf("mount source %s: %w", m.source, err)
		}
		isDir[i] = fi.IsDir()
		src := fmt.Sprintf("%s/%d", keep, i)
		if isDir[i] {
			fmt.Fprintf(&b, "mkdir -p %s\n", shq(src))
		} else {
			fmt.Fprintf(&b, "mkdir -p %s\ntouch %s\n", shq(keep), shq(src))
		}
		fmt.Fprintf(&b, "mount --bind %s %s\n", shq(m.source), shq(src))
		mounts[i].source = src
	}
	var ovs []string
	for o := range overlays {
		ovs = append(ovs, o)
	}
	sort.Strings(ovs) // parents first
	for _, o := range ovs {
		fmt.Fprintf(&b, "mkdir -p %s\nmount -t tmpfs -o mode=0755 kpr-e2e-pod %s\n", shq(o), shq(o))
	}
	order := make([]int, len(mounts))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return len(mounts[order[i]].target) < len(mounts[order[j]].target) })
	for _, i := range order {
		m := mounts[i]
		t := m.target
		if isDir[i] {
			fmt.Fprintf(&b, "mkdir -p %s\n", shq(t))
		} else {
			fmt.Fprintf(&b, "mkdir -p %s\n[ -e %s ] || touch %s\n", shq(filepath.Dir(t)), shq(t), shq(t))
		}
		fmt.Fprintf(&b, "mount --bind %s %s\n", shq(m.source), shq(t))
		if m.readOnly {
			fmt.Fprintf(&b, "mount -o remount,bind,ro %s\n", shq(t))
		}
	}
	b.WriteString(`exec "$@"` + "\n")
	return b.String(), nil
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
