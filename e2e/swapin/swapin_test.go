package swapin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// TestSwapIn: the manifests against a real apiserver, every ClusterRole rule
// needed, and kpr running from kubeadm's kube-proxy ConfigMap as its
// DaemonSet would, with Service traffic on both nodes.
func TestSwapIn(t *testing.T) {
	e := newEnv(t)
	t.Run("Manifests", e.testManifests)
	t.Run("EveryClusterRoleRuleIsNeeded", e.testRBACRules)
	t.Run("KprFromTheKubeProxyConfigMap", e.testFromConfigMap)
	t.Run("MigrateDocPatches", e.testDocPatches)
}

// testDocPatches applies the JSON patches docs/migrate.md gives for kpr's
// DaemonSet (dry run on, dry run off, takeover off for a rollback), in that
// order, to manifests/daemonset.yaml with `kubectl patch --local`, so the
// documented commands keep matching the manifest.
func (e *env) testDocPatches(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("skipping: kubectl not installed")
	}
	doc := string(e.read(t, filepath.Join(e.repo, "docs", "migrate.md")))
	var patches []string
	for _, part := range strings.Split(doc, "patch ds kpr --type json")[1:] {
		_, rest, ok := strings.Cut(part, "-p '")
		if !ok {
			t.Fatalf("a kpr patch in docs/migrate.md has no -p '...': %.80q", part)
		}
		patch, _, _ := strings.Cut(rest, "'")
		patches = append(patches, patch)
	}
	if len(patches) != 3 {
		t.Fatalf("docs/migrate.md has %d JSON patches for ds/kpr, want 3 (dry run on, off, takeover off)", len(patches))
	}
	cur := e.manifest("daemonset.yaml")
	want := []struct{ has, hasNot []string }{
		{has: []string{"--takeover-kube-proxy", "--takeover-dry-run"}},
		{has: []string{"--takeover-kube-proxy"}, hasNot: []string{"--takeover-dry-run"}},
		{hasNot: []string{"--takeover-kube-proxy", "--takeover-dry-run"}},
	}
	for i, patch := range patches {
		out, err := exec.Command(kubectl, "patch", "--local", "-f", cur, "--type", "json", "-p", patch, "-o", "yaml").CombinedOutput()
		if err != nil {
			t.Fatalf("patch %d of docs/migrate.md does not apply to the manifest: %v\n%s\n%s", i+1, err, patch, out)
		}
		for _, s := range want[i].has {
			if !strings.Contains(string(out), "- "+s+"\n") {
				t.Errorf("after patch %d the command lacks %s", i+1, s)
			}
		}
		for _, s := range want[i].hasNot {
			if strings.Contains(string(out), "- "+s+"\n") {
				t.Errorf("after patch %d the command still has %s", i+1, s)
			}
		}
		cur = filepath.Join(t.TempDir(), "ds.yaml")
		if err := os.WriteFile(cur, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// testManifests checks what the issue asks of the manifests, on the objects
// as the apiserver accepted them.
func (e *env) testManifests(t *testing.T) {
	// The kustomization names every manifest, and they all decode.
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(e.read(t, e.manifest("kustomization.yaml")), &k); err != nil {
		t.Fatal(err)
	}
	if want := []string{"rbac.yaml", "daemonset.yaml", "podnet.yaml"}; !slices.Equal(k.Resources, want) {
		t.Errorf("kustomization resources %v, want %v", k.Resources, want)
	}
	var fromFiles []string
	for _, f := range k.Resources {
		objs, err := framework.DecodeManifest(e.read(t, e.manifest(f)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			fromFiles = append(fromFiles, o.GetKind()+"/"+o.GetName())
		}
	}
	sort.Strings(fromFiles)
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		// What `kubectl apply -k manifests/` would send.
		out, err := exec.Command(kubectl, "kustomize", filepath.Join(e.repo, "manifests")).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize manifests/: %v", err)
		}
		objs, err := framework.DecodeManifest(out)
		if err != nil {
			t.Fatal(err)
		}
		var built []string
		for _, o := range objs {
			built = append(built, o.GetKind()+"/"+o.GetName())
		}
		sort.Strings(built)
		if !slices.Equal(built, fromFiles) {
			t.Errorf("kubectl kustomize builds %v, the files hold %v", built, fromFiles)
		}
	} else {
		t.Logf("kubectl not installed: the kustomization is checked by reading it only")
	}

	// The podnet DaemonSet and the rollback cleanup DaemonSet pass the
	// apiserver's validation too.
	var podnet, cleanup *appsv1.DaemonSet
	for _, o := range e.c.ApplyYAMLDryRun(t, e.read(t, e.manifest("podnet.yaml"))) {
		if o.GetKind() == "DaemonSet" {
			podnet = toDaemonSet(t, o)
		}
	}
	for _, o := range e.c.ApplyYAMLDryRun(t, e.read(t, e.manifest(filepath.Join("rollback", "cleanup-daemonset.yaml")))) {
		cleanup = toDaemonSet(t, o)
	}
	if podnet == nil || cleanup == nil {
		t.Fatal("podnet.yaml or rollback/cleanup-daemonset.yaml has no DaemonSet")
	}

	ds := e.ds
	ps := ds.Spec.Template.Spec
	c := ps.Containers[0]
	check := func(ok bool, what string) {
		t.Helper()
		if !ok {
			t.Errorf("kpr DaemonSet: %s", what)
		}
	}
	check(ps.HostNetwork, "not hostNetwork")
	check(ps.PriorityClassName == "system-node-critical", "priorityClassName is "+ps.PriorityClassName)
	check(tolerateEverything(ps.Tolerations), fmt.Sprintf("does not tolerate every taint: %+v", ps.Tolerations))
	check(ps.ServiceAccountName == "kpr", "ServiceAccount "+ps.ServiceAccountName)
	check(ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType &&
		ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() == 1, "update strategy is not RollingUpdate with maxUnavailable 1")
	check(c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/livez" && c.LivenessProbe.HTTPGet.Port.IntValue() == 10256, "liveness probe is not /livez on 10256")
	check(c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/healthz" && c.ReadinessProbe.HTTPGet.Port.IntValue() == 10256, "readiness probe is not /healthz on 10256")
	check(!c.Resources.Requests.Cpu().IsZero() && !c.Resources.Requests.Memory().IsZero(), "no CPU and memory requests")
	check(hostPathMount(ps, c, "/run/xtables.lock", "/run/xtables.lock"), "no xtables lock mount")
	check(hostPathMount(ps, c, "/lib/modules", "/lib/modules"), "no /lib/modules mount")
	check(configMapMount(ps, c, "kube-proxy", "/var/lib/kube-proxy"), "the kube-proxy ConfigMap is not mounted at /var/lib/kube-proxy")
	cmd := strings.Join(append(c.Command, c.Args...), " ")
	check(strings.Contains(cmd, "--config=/var/lib/kube-proxy/config.conf"), "does not read config.conf of the kube-proxy ConfigMap: "+cmd)
	check(strings.Contains(cmd, "--takeover-kube-proxy"), "no --takeover-kube-proxy: "+cmd)
	check(c.SecurityContext != nil && (c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged ||
		c.SecurityContext.Capabilities != nil && slices.Contains(c.SecurityContext.Capabilities.Add, "NET_ADMIN")), "neither privileged nor NET_ADMIN")

	pps := podnet.Spec.Template.Spec
	pc := pps.Containers[0]
	pcmd := strings.Join(append(pc.Command, pc.Args...), " ")
	if !pps.HostNetwork || !tolerateEverything(pps.Tolerations) || !strings.Contains(pcmd, "podnet node") ||
		!hostPathMount(pps, pc, "/opt/cni/bin", "/opt/cni/bin") || !hostPathMount(pps, pc, "/etc/cni/net.d", "/etc/cni/net.d") ||
		pc.SecurityContext == nil || pc.SecurityContext.Capabilities == nil || !slices.Contains(pc.SecurityContext.Capabilities.Add, "NET_ADMIN") {
		t.Errorf("podnet DaemonSet does not run `podnet node` on the host network with NET_ADMIN, the CNI directories and every toleration: %s", pcmd)
	}
	ccmd := strings.Join(append(cleanup.Spec.Template.Spec.InitContainers[0].Command, cleanup.Spec.Template.Spec.InitContainers[0].Args...), " ")
	if ccmd != "/proxy --cleanup" {
		t.Errorf("rollback DaemonSet's init container runs %q, want /proxy --cleanup", ccmd)
	}

	// The ConfigMap reads back as written (kpr gets exactly kubeadm's file).
	cm, err := e.c.Client.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "kube-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := framework.DecodeManifest(e.read(t, filepath.Join("testdata", "kube-proxy-configmap.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"config.conf", "kubeconfig.conf"} {
		want, _, _ := unstructured.NestedString(objs[0].Object, "data", key)
		if cm.Data[key] != want || want == "" {
			t.Errorf("ConfigMap key %s reads back differently:\n%s", key, cm.Data[key])
		}
	}
}

func tolerateEverything(ts []corev1.Toleration) bool {
	for _, t := range ts {
		if t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == "" {
			return true
		}
	}
	return false
}

func hostPathMount(ps corev1.PodSpec, c corev1.Container, hostPath, mountPath string) bool {
	for _, v := range ps.Volumes {
		if v.HostPath == nil || v.HostPath.Path != hostPath {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && m.MountPath == mountPath {
				return true
			}
		}
	}
	return false
}

func configMapMount(ps corev1.PodSpec, c corev1.Container, name, mountPath string) bool {
	for _, v := range ps.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != name {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && m.MountPath == mountPath {
				return true
			}
		}
	}
	return false
}

// testRBACRules removes each rule of manifests/rbac.yaml's ClusterRole in
// turn and runs kpr with it: kpr must never complete a sync, and must log a
// "forbidden" line naming the resource, so an operator sees what is missing.
func (e *env) testRBACRules(t *testing.T) {
	ctx := context.Background()
	roles := e.c.Client.RbacV1().ClusterRoles()
	full, err := roles.Get(ctx, "kpr", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Rules) == 0 {
		t.Fatal("the kpr ClusterRole has no rules")
	}
	restore := func() {
		cur, err := roles.Get(ctx, "kpr", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Rules = full.Rules
		if _, err := roles.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()
	for i, rule := range full.Rules {
		name := strings.Join(rule.Resources, ",")
		t.Run("without_"+name, func(t *testing.T) {
			cur, err := roles.Get(ctx, "kpr", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cur.Rules = append(slices.Clone(full.Rules[:i]), full.Rules[i+1:]...)
			if _, err := roles.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			defer restore()
			p := e.startKpr(t, 0, nil)
			defer p.Stop(t)
			var line string
			framework.Eventually(t, 60*time.Second, "a forbidden log line naming "+name, func(context.Context) error {
				if l := forbiddenLine(logLines(t, p), rule); l != "" {
					line = l
					return nil
				}
				if !p.Running() {
					return fmt.Errorf("kpr exited without naming %s:\n%s", name, p.Tail(20))
				}
				return fmt.Errorf("no line says %s are forbidden", name)
			})
			t.Logf("kpr without the %s rule logs: %s", name, line)
			// kpr must not have programmed anything: with a resource missing
			// its caches never sync.
			if v, ok, err := metric(ctx, p.Node, kprMetrics, framework.SyncedMetric); err == nil && ok && v > 0 {
				t.Errorf("kpr completed a sync without the %s rule", name)
			}
			for _, backend := range []string{"legacy", "nft"} {
				if out := save(t, p.Node, backend); strings.Contains(out, "KPR-SVC-") {
					t.Errorf("kpr programmed Service rules (%s backend) without the %s rule", backend, name)
				}
			}
		})
	}
}

// forbiddenLine finds a log line that says the apiserver refused one of the
// rule's resources to kpr's ServiceAccount, naming the resource.
func forbiddenLine(lines []string, rule rbacv1.PolicyRule) string {
	for _, l := range lines {
		plain := strings.ReplaceAll(l, `\"`, `"`)
		if !strings.Contains(plain, "forbidden") {
			continue
		}
		for _, res := range rule.Resources {
			if strings.Contains(plain, `resource "`+res+`"`) {
				return l
			}
		}
	}
	return ""
}

// testFromConfigMap runs kpr on both nodes exactly as the DaemonSet runs it
// (its command, the kube-proxy ConfigMap at /var/lib/kube-proxy, the token of
// ServiceAccount kpr) and checks ClusterIP and NodePort traffic.
func (e *env) testFromConfigMap(t *testing.T) {
	w := e.createWeb(t)
	var proxies []*framework.Proxy
	for i := range e.c.Nodes() {
		proxies = append(proxies, e.startKpr(t, i, nil))
	}
	for _, p := range proxies {
		waitSynced(t, p, kprMetrics, 60*time.Second)
	}
	// The settings came from config.conf: kubeadm's clusterCIDR is in
	// kpr's /configz, and kpr found the API server through
	// kubeconfig.conf's token file.
	code, body, err := proxies[0].Node.HTTPGet(context.Background(), "http://"+kprMetrics+"/configz")
	if err != nil || code != 200 {
		t.Fatalf("configz: %d %v", code, err)
	}
	if !strings.Contains(body, `"clusterCIDR":"198.18.0.0/16,2001:db8:10::/56"`) {
		t.Errorf("kpr's /configz does not show the ConfigMap's clusterCIDR:\n%s", body)
	}
	e.checkTraffic(t, w)
	for _, p := range proxies {
		code, _, err := p.Healthz(context.Background())
		if err != nil || code != 200 {
			t.Errorf("%s /healthz on %s: %d %v", p.Name, kprHealthz, code, err)
		}
		for _, l := range logLines(t, p) {
			if ll := strings.ToLower(l); strings.Contains(ll, "forbidden") || strings.Contains(ll, "unauthorized") {
				t.Errorf("%s was refused something with the full ClusterRole: %s", p.Name, l)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(e.c.RunDir, "pods", "kpr-node1", "volumes", "kube-proxy", "config.conf")); err != nil {
		t.Errorf("the ConfigMap was not materialised as the Pod's volume: %v", err)
	}
}
