package ctcli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// The commands, their flags and their help text.

func commonFlags(fs *pflag.FlagSet, o *options) {
	fs.StringVar(&o.source, "source", SourceAuto, "where Service data comes from: proxy (the kpr proxy on this node), api (the apiserver) or auto (proxy if it answers, else api)")
	fs.StringVar(&o.proxyURL, "proxy-url", DefaultProxyURL, "the kpr proxy's metrics address, which serves "+snapshotPath)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --source api/auto (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&o.node, "node", "", "this node's name, for local endpoints and traffic policies with --source api (default: the host name, lower-cased, as kube-proxy's --hostname-override)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for Service data")
}

func filterFlags(fs *pflag.FlagSet, o *options, withState bool) {
	fs.StringVar(&o.service, "service", "", "only this Service (namespace/name)")
	fs.StringVar(&o.port, "port", "", "with --service: only this Service port (name or number)")
	fs.StringVar(&o.pod, "pod", "", "only entries whose endpoint is this pod")
	fs.StringVar(&o.protocol, "protocol", "", "only this protocol: tcp, udp or sctp")
	if withState {
		fs.StringVar(&o.state, "state", "", "only entries in this state: a TCP or SCTP state (ESTABLISHED, TIME_WAIT, …), UNREPLIED, REPLIED or ASSURED")
	}
}

func outputFlag(fs *pflag.FlagSet, o *options, what string) {
	fs.StringVarP(&o.output, "output", "o", FormatTable, what)
}

var commands = []*command{
	{
		name:    "list",
		summary: "conntrack entries of kpr's Services, with Service, endpoint pod and node",
		usage: `Usage: proxy conntrack list [flags]

Lists the kernel's conntrack entries whose original destination is one of
kpr's Services (a cluster IP, external IP or load-balancer IP at the Service
port, or a node port on this node), each with the Service port, the
endpoint the kernel DNATed it to (its pod and node), protocol, state and
remaining timeout. ENDPOINT is <not DNATed> when the first packet was not
NATed at all; POD is <gone> when the endpoint is no longer one of the
Service's endpoints.

Examples:
  # Every entry of every Service
  proxy conntrack list

  # DNS entries, with more columns (via, endpoint state, reply destination, id, mark)
  proxy conntrack list --service kube-system/kube-dns --protocol udp -o wide

  # Entries still sent to one pod
  proxy conntrack list --pod coredns-7db6d8ff4d-x2x9k

  # Half-open UDP flows (no answer ever came back), as JSON
  proxy conntrack list --state UNREPLIED -o json
`,
		flags: func(fs *pflag.FlagSet, o *options) {
			filterFlags(fs, o, true)
			outputFlag(fs, o, "output format: table, wide or json")
		},
		run: (*CLI).runList,
	},
	{
		name:    "stale",
		summary: "entries that point at endpoints not serving now, and why",
		usage: `Usage: proxy conntrack stale [flags]

Shows the UDP and SCTP entries of kpr's Services that send traffic where it
cannot be answered: to an endpoint that is gone, terminating or not ready,
or nowhere at all because the first packet came before the Service had
endpoints. A client that keeps its source port (DNS resolvers do) keeps
using such an entry until it times out; this is the usual answer to "why
is my DNS hanging". The choice is the proxy's own cleanup logic, applied to
every Service. TCP entries are never stale: a client whose connection
breaks reconnects from a new port.

Reasons:
  endpoint_gone  the entry was DNATed to an address that is no longer an
                 endpoint this node sends to (removed, terminating, not ready)
  not_nated      the Service had no endpoints when the entry was created
  no_endpoints   not DNATed, and the Service still has no endpoints
                 (kpr removes it when endpoints appear)

Fix: proxy conntrack flush --service NAMESPACE/NAME --protocol udp

Examples:
  # Why is my DNS hanging?
  proxy conntrack stale --service kube-system/kube-dns

  # Everything stale on this node, with pods and states
  proxy conntrack stale -o wide
`,
		flags: func(fs *pflag.FlagSet, o *options) {
			filterFlags(fs, o, true)
			outputFlag(fs, o, "output format: table, wide or json")
		},
		run: (*CLI).runStale,
	},
	{
		name:    "flush",
		summary: "delete a Service's entries (--dry-run only shows them)",
		usage: `Usage: proxy conntrack flush --service NAMESPACE/NAME [--port P] [--dry-run] [flags]

Deletes the conntrack entries of one Service (narrowed by --port,
--protocol, --pod or --state) and says how many went. The next packet of
each flow gets a fresh NAT decision. Deleting a TCP entry usually breaks
that connection; add --protocol udp to leave TCP alone. Each entry is
deleted by its tuple and id, so one that was re-created meanwhile is left
alone.

Examples:
  # Unstick DNS clients
  proxy conntrack flush --service kube-system/kube-dns --protocol udp

  # See what would go, delete nothing
  proxy conntrack flush --service default/web --port 80 --dry-run
`,
		flags: func(fs *pflag.FlagSet, o *options) {
			filterFlags(fs, o, true)
			fs.BoolVar(&o.dryRun, "dry-run", false, "list the entries that would be deleted and delete nothing")
			outputFlag(fs, o, "output format for the entries: table, wide or json")
		},
		run: (*CLI).runFlush,
	},
	{
		name:    "watch",
		summary: "stream new and destroyed entries of kpr's Services until Ctrl-C",
		usage: `Usage: proxy conntrack watch [flags]

Prints a line for every conntrack entry of kpr's Services that the kernel
creates or destroys, annotated like list, until interrupted. Service data
is refreshed every --refresh.

Examples:
  # Watch DNS lookups being NATed
  proxy conntrack watch --service kube-system/kube-dns

  # Only entries that die, as JSON lines
  proxy conntrack watch --events destroy -o json
`,
		flags: func(fs *pflag.FlagSet, o *options) {
			filterFlags(fs, o, false)
			fs.StringVar(&o.events, "events", "new,destroy", "event types to show: new, update, destroy (comma-separated)")
			fs.DurationVar(&o.refresh, "refresh", 30*time.Second, "how often to reload Service data (0: never)")
			outputFlag(fs, o, "output format: table (one line per event) or json (one object per line)")
		},
		run: (*CLI).runWatch,
	},
}

const topUsage = `proxy conntrack: the kernel's conntrack entries for kpr's Services, in terms of
Services and pods instead of raw addresses.

Usage:
  proxy conntrack <command> [flags]

Commands:
%s
Run "proxy conntrack <command> --help" for a command's flags and examples.

Service data comes from the kpr proxy running on this node (its debug
endpoint on the metrics address, --proxy-url, default ` + DefaultProxyURL + `)
or, if it does not answer, from the apiserver (--kubeconfig, $KUBECONFIG,
~/.kube/config or in-cluster); --source proxy|api|auto picks.
Reading the conntrack table needs root or CAP_NET_ADMIN on the node.

Examples:
  # Why is my DNS hanging?
  proxy conntrack stale --service kube-system/kube-dns
  proxy conntrack flush --service kube-system/kube-dns --protocol udp

  # What is talking to this pod through a Service?
  proxy conntrack list --pod web-5d9c7b6f4-abcde
`

func (c *CLI) topUsage(w io.Writer) {
	var b strings.Builder
	for _, cmd := range commands {
		fmt.Fprintf(&b, "  %-6s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, topUsage, b.String())
}

func commandUsage(w io.Writer, cmd *command, fs *pflag.FlagSet) {
	fmt.Fprint(w, cmd.usage)
	fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
}

func newFlagSet(cmd *command, o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("proxy conntrack "+cmd.name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	cmd.flags(fs, o)
	commonFlags(fs, o)
	return fs
}
