// Command podnet is kpr's pod-wiring CNI plugin and, in the same binary,
// its node agent.
//
// Run by a container runtime (CNI_COMMAND set) it is a CNI plugin: a node
// bridge, a veth per pod, node-local IPAM. Run by hand or by the CNI
// DaemonSet with a subcommand as first argument it is a tool:
//
//	podnet node     install the plugin, write the node's conflist from
//	                Node.spec.podCIDRs, keep host-gw routes to other nodes
//	podnet install  only copy the binary into the CNI bin directory
//	podnet version  print the version
//
// One binary means one image for the DaemonSet and a plugin that can never
// drift from the agent that installed it.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kpr-proxy/kpr/internal/cni/plugin"
	"github.com/kpr-proxy/kpr/internal/version"
)

func init() {
	// Namespace switches are per OS thread. Keeping main on the initial
	// thread means the plugin's own work always runs in the namespace the
	// runtime started it in; ns.Do switches other, locked threads.
	runtime.LockOSThread()
}

type subcommand struct {
	run   func(args []string) int
	usage string
}

var subcommands = map[string]subcommand{
	"node":    {runNodeCmd, "watch Nodes: install the plugin, write the conflist, keep routes to other nodes"},
	"install": {runInstallCmd, "copy this binary into the CNI bin directory and exit"},
	"version": {runVersionCmd, "print the version"},
}

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 {
		if sc, ok := subcommands[os.Args[1]]; ok {
			os.Exit(sc.run(os.Args[2:]))
		}
		if os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
			usage()
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "podnet: unknown subcommand %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	log := plugin.StderrLogger()
	defer func() { _ = log.Sync() }()
	p := plugin.New(plugin.Config{Logger: log})
	skel.PluginMainFuncs(p.Funcs(), plugin.VersionInfo(), about())
}

func about() string { return "podnet CNI plugin " + version.Version + " (kpr)" }

func usage() {
	fmt.Fprintf(os.Stderr, "%s\n\nAs a CNI plugin: run by the container runtime with CNI_COMMAND set.\n\nSubcommands:\n", about())
	for _, name := range []string{"node", "install", "version"} {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", name, subcommands[name].usage)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'podnet <subcommand> --help' for its flags.\n")
}

func runVersionCmd([]string) int {
	fmt.Printf("%s\nCNI spec versions: %v\n", about(), plugin.SupportedVersions)
	return 0
}
