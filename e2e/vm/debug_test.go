package vm

import (
	"os"
	"strings"
	"testing"

	"github.com/kpr-proxy/kpr/e2e/framework"
	"github.com/kpr-proxy/kpr/e2e/vm/image"
)

// TestVMScript is a debugging aid, not a check: it boots a cluster and the
// VM, sets the node up, optionally starts the proxy under test
// (E2E_VM_SCRIPT_PROXY=1), runs the shell script in $E2E_VM_SCRIPT in the
// guest and prints its output.
//
//	cd e2e && E2E_VM_SCRIPT='ipvsadm -Ln; ipset list | head' E2E_VM_SCRIPT_PROXY=1 \
//	  E2E_PROXY=upstream go test -count=1 -v -run TestVMScript ./vm/
func TestVMScript(t *testing.T) {
	script := os.Getenv("E2E_VM_SCRIPT")
	if script == "" {
		t.Skip("debugging aid: set E2E_VM_SCRIPT to a shell script to run in the VM")
	}
	c := framework.Start(t, framework.Options{Nodes: 1})
	kind := framework.ProxyUnderTest()
	var files []image.OverlayFile
	withProxy := os.Getenv("E2E_VM_SCRIPT_PROXY") != ""
	if withProxy {
		pf, err := ProxyFile(c, kind)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, pf)
	}
	v := Boot(t, c, Config{Files: files})
	v.SetupNode(t, "nft")
	if withProxy {
		c.ApplyYAML(t, []byte(upstreamExtraRBAC))
		v.StartProxy(t, kind, c.AdminKubeconfig, strings.Fields(os.Getenv("E2E_VM_PROXY_ARGS"))...)
	}
	out, err := v.TryExec("", "/bin/sh", "-c", "ip() { /bin/ip \"$@\"; }\n"+script)
	t.Logf("script output:\n%s", out)
	if err != nil {
		t.Logf("script failed: %v", err)
	}
}
