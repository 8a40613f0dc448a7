// Package ctcli is `proxy conntrack`, the operator CLI for the kernel's
// conntrack entries of kpr's Services: it lists them annotated with the
// Service, endpoint pod and node; explains which are stale and why (a UDP
// client — DNS above all — keeps being sent to a pod that is gone until its
// entry times out; kubernetes issues 19029, 48370, 125467); flushes a
// Service's entries; and streams new and destroyed entries.
//
// Layout: view.go turns the proxy's /debug/kpr/snapshot JSON into model
// snapshots; source.go gets Service data from the running proxy or the
// apiserver; annotate.go is the pure flows + snapshot → rows layer (stale
// selection is conntrack.NewPlan's); format.go renders rows; cli.go parses
// flags and does the I/O.
package ctcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/conntrack"
)

// Conntrack is the kernel boundary the CLI needs: list, delete, watch.
// *conntrack.Netlink implements it; tests wrap the fake.
type Conntrack interface {
	conntrack.Interface
	conntrack.Watcher
	Close() error
}

// Config holds the CLI's outside world; every field but Stdout/Stderr has a
// default that talks to the real node.
type Config struct {
	Stdout, Stderr io.Writer
	// OpenConntrack opens the conntrack table (default: ctnetlink in the
	// calling thread's network namespace).
	OpenConntrack func() (Conntrack, error)
	// LocalAddrs are this node's addresses, for matching node-port
	// flows (default: every interface address).
	LocalAddrs func() ([]netip.Addr, error)
	// HTTPClient reads the proxy's debug endpoint (default: no proxy
	// from the environment; --timeout applies through the context).
	HTTPClient *http.Client
	// KubeClient builds the API client (default DefaultKubeClient).
	KubeClient KubeClientFunc
	// Hostname gives the default node name for --source api (default
	// os.Hostname, lower-cased as kube-proxy does).
	Hostname func() (string, error)
	// Logger for the API watcher (default: discard).
	Logger *zap.Logger
}

// CLI runs `proxy conntrack` commands.
type CLI struct{ cfg Config }

// New fills in cfg's defaults.
func New(cfg Config) *CLI {
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.OpenConntrack == nil {
		cfg.OpenConntrack = func() (Conntrack, error) { return conntrack.NewNetlink(conntrack.NetlinkConfig{}) }
	}
	if cfg.LocalAddrs == nil {
		cfg.LocalAddrs = interfaceAddrs
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{Proxy: nil}}
	}
	if cfg.KubeClient == nil {
		cfg.KubeClient = DefaultKubeClient
	}
	if cfg.Hostname == nil {
		cfg.Hostname = os.Hostname
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &CLI{cfg: cfg}
}

// Main runs `proxy conntrack args...` against the real node and returns the
// exit code: 0 success, 1 failure, 2 bad usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return New(Config{Stdout: stdout, Stderr: stderr}).Run(ctx, args)
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// options are the parsed flags of one command.
type options struct {
	source, proxyURL, kubeconfig, node string
	timeout                            time.Duration
	output                             string
	service, port, pod, protocol       string
	state                              string
	dryRun                             bool
	events                             string
	refresh                            time.Duration

	filter RowFilter
	types  []conntrack.EventType
}

type command struct {
	name, summary string
	usage         string // the text above the flags
	flags         func(*pflag.FlagSet, *options)
	run           func(*CLI, context.Context, *options) error
}

// usageError is bad input: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// Run runs one command (args without the leading "conntrack") and returns
// the exit code.
func (c *CLI) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		c.topUsage(c.cfg.Stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if name == "help" && len(args) > 1 {
			if cmd := findCommand(args[1]); cmd != nil {
				commandUsage(c.cfg.Stdout, cmd, newFlagSet(cmd, &options{}))
				return 0
			}
		}
		c.topUsage(c.cfg.Stdout)
		return 0
	}
	cmd := findCommand(name)
	if cmd == nil {
		fmt.Fprintf(c.cfg.Stderr, "proxy conntrack: unknown command %q\nRun 'proxy conntrack --help' for usage.\n", name)
		return 2
	}
	var o options
	fs := newFlagSet(cmd, &o)
	err := fs.Parse(args[1:])
	switch {
	case errors.Is(err, pflag.ErrHelp):
		commandUsage(c.cfg.Stdout, cmd, fs)
		return 0
	case err == nil && fs.NArg() > 0:
		err = usagef("unexpected argument %q", fs.Arg(0))
	}
	if err == nil {
		err = o.validate(cmd.name)
	}
	if err != nil {
		fmt.Fprintf(c.cfg.Stderr, "proxy conntrack %s: %v\nRun 'proxy conntrack %s --help' for usage.\n", cmd.name, err, cmd.name)
		return 2
	}
	if err := cmd.run(c, ctx, &o); err != nil {
		fmt.Fprintf(c.cfg.Stderr, "proxy conntrack %s: %v\n", cmd.name, err)
		var ue *usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func findCommand(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

// validate checks every flag before anything touches the node.
func (o *options) validate(cmd string) error {
	switch o.source {
	case SourceAuto, SourceProxy, SourceAPI:
	default:
		return usagef("--source %q: want proxy, api or auto", o.source)
	}
	u, err := normalizeProxyURL(o.proxyURL)
	if err != nil {
		return &usageError{err.Error()}
	}
	o.proxyURL = u
	if o.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	if o.output, err = parseFormat(o.output); err != nil {
		return &usageError{err.Error()}
	}
	if cmd == "watch" && o.output == FormatWide {
		return usagef("watch prints table or json")
	}
	if o.service != "" {
		ns, name, ok := strings.Cut(o.service, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return usagef("--service wants namespace/name, got %q", o.service)
		}
		o.filter.Namespace, o.filter.Name = ns, name
	}
	if o.port != "" {
		if o.service == "" {
			return usagef("--port needs --service")
		}
		o.filter.Port = o.port
	}
	o.filter.Pod = o.pod
	if o.protocol != "" {
		p, err := conntrack.ParseProto(o.protocol)
		if err != nil || (p != conntrack.ProtoTCP && p != conntrack.ProtoUDP && p != conntrack.ProtoSCTP) {
			return usagef("--protocol %q: want tcp, udp or sctp", o.protocol)
		}
		o.filter.Protocol = p
	}
	if o.state != "" {
		s, err := parseState(o.state)
		if err != nil {
			return &usageError{"--state: " + err.Error()}
		}
		o.filter.State = s
	}
	if cmd == "flush" && o.service == "" {
		return usagef("flush needs --service namespace/name (refusing to flush every Service's entries)")
	}
	if cmd == "watch" {
		if o.refresh < 0 {
			return usagef("--refresh must not be negative")
		}
		for _, e := range strings.Split(o.events, ",") {
			switch strings.ToLower(strings.TrimSpace(e)) {
			case "new":
				o.types = append(o.types, conntrack.EventNew)
			case "update":
				o.types = append(o.types, conntrack.EventUpdate)
			case "destroy":
				o.types = append(o.types, conntrack.EventDestroy)
			default:
				return usagef("--events: unknown event type %q (want new, update or destroy)", e)
			}
		}
	}
	return nil
}

// newSource builds the --source of o. ctx bounds background watchers.
func (c *CLI) newSource(ctx context.Context, o *options) (source, error) {
	proxy := &proxySource{url: o.proxyURL, client: c.cfg.HTTPClient}
	node := o.node
	if node == "" && o.source != SourceProxy {
		h, err := c.cfg.Hostname()
		if err != nil {
			return nil, fmt.Errorf("finding this node's name (give --node): %w", err)
		}
		node = strings.ToLower(strings.TrimSpace(h))
	}
	api := &apiSource{kubeconfig: o.kubeconfig, node: node, newClient: c.cfg.KubeClient, log: c.cfg.Logger, runCtx: ctx}
	switch o.source {
	case SourceProxy:
		return proxy, nil
	case SourceAPI:
		return api, nil
	}
	return &autoSource{proxy: proxy, api: api, stderr: c.cfg.Stderr}, nil
}

// load opens the source and loads the View within --timeout.
func (c *CLI) load(ctx context.Context, o *options) (source, *View, error) {
	src, err := c.newSource(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	v, err := src.Load(lctx)
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	if err := checkFilter(v, o); err != nil {
		src.Close()
		return nil, nil, err
	}
	return src, v, nil
}

// checkFilter turns a --service or --port that names nothing into an error
// (a silent empty list would send the operator down the wrong path).
func checkFilter(v *View, o *options) error {
	if o.filter.Name == "" {
		return nil
	}
	ports := v.ServicePorts(o.filter.Namespace, o.filter.Name)
	if len(ports) == 0 {
		return fmt.Errorf("Service %s/%s not found (source: %s)", o.filter.Namespace, o.filter.Name, v.Source)
	}
	if o.filter.Port == "" {
		return nil
	}
	var have []string
	seen := map[string]bool{}
	for _, sp := range ports {
		r := Row{Service: sp.Name, Port: sp.Port}
		if portMatches(o.filter.Port, &r) {
			return nil
		}
		d := fmt.Sprintf("%d/%s", sp.Port, sp.Protocol)
		if sp.Name.Port != "" {
			d = sp.Name.Port + " " + d
		}
		if !seen[d] {
			seen[d] = true
			have = append(have, d)
		}
	}
	return fmt.Errorf("Service %s/%s has no port %q (it has %s)", o.filter.Namespace, o.filter.Name, o.filter.Port, strings.Join(have, ", "))
}

func (c *CLI) openConntrack() (Conntrack, error) {
	ct, err := c.cfg.OpenConntrack()
	if err != nil {
		return nil, kernelError("opening the conntrack table", err)
	}
	return ct, nil
}

func (c *CLI) annotator(v *View) *Annotator {
	local, err := c.cfg.LocalAddrs()
	if err != nil {
		fmt.Fprintf(c.cfg.Stderr, "warning: cannot read this node's addresses (%v); node-port entries are matched on any address\n", err)
		local = nil
	}
	return NewAnnotator(v, local)
}

// dump lists the flows of every family the View has Services in.
func dump(ct conntrack.Interface, v *View, proto uint8) ([]conntrack.Flow, error) {
	var out []conntrack.Flow
	for _, fv := range v.Families {
		flows, err := ct.List(fv.Snapshot.Family, conntrack.Filter{Protocol: proto})
		if err != nil {
			return nil, kernelError(fmt.Sprintf("listing %s conntrack entries", fv.Snapshot.Family), err)
		}
		out = append(out, flows...)
	}
	return out, nil
}

// rows loads everything a one-shot command needs and returns the filtered
// rows: list (stale=false) or stale.
func (c *CLI) rows(ctx context.Context, o *options, stale bool) (*View, []Row, Conntrack, error) {
	src, v, err := c.load(ctx, o)
	if err != nil {
		return nil, nil, nil, err
	}
	src.Close()
	if o.filter.Pod != "" && !v.hasPod(o.filter.Pod) {
		fmt.Fprintf(c.cfg.Stderr, "note: no endpoint of any Service is pod %q now; entries to endpoints that were removed carry no pod name\n", o.filter.Pod)
	}
	ct, err := c.openConntrack()
	if err != nil {
		return nil, nil, nil, err
	}
	flows, err := dump(ct, v, o.filter.Protocol)
	if err != nil {
		ct.Close()
		return nil, nil, nil, err
	}
	a := c.annotator(v)
	var rows []Row
	if stale {
		rows = a.Stale(flows)
	} else {
		rows = a.List(flows)
	}
	return v, o.filter.Filter(rows), ct, nil
}

func (c *CLI) print(v *View, o *options, rows []Row, table, wide []column, empty string) error {
	switch o.output {
	case FormatJSON:
		return writeJSON(c.cfg.Stdout, jsonDoc(v, rows))
	case FormatWide:
		table = wide
	}
	if len(rows) == 0 {
		fmt.Fprintf(c.cfg.Stderr, "%s (source: %s)\n", empty, v.Source)
		return nil
	}
	return writeTable(c.cfg.Stdout, table, rows)
}

func (c *CLI) runList(ctx context.Context, o *options) error {
	v, rows, ct, err := c.rows(ctx, o, false)
	if err != nil {
		return err
	}
	defer ct.Close()
	return c.print(v, o, rows, listTable, listWide, "no matching conntrack entries")
}

func (c *CLI) runStale(ctx context.Context, o *options) error {
	v, rows, ct, err := c.rows(ctx, o, true)
	if err != nil {
		return err
	}
	defer ct.Close()
	if err := c.print(v, o, rows, staleTable, staleWide, "no stale conntrack entries"); err != nil {
		return err
	}
	if len(rows) > 0 && o.output != FormatJSON {
		c.flushHints(rows)
	}
	return nil
}

// flushHints tells how to clear what stale found, one line per Service.
func (c *CLI) flushHints(rows []Row) {
	type svc struct{ ns, name string }
	protos := map[svc]map[string]bool{}
	var order []svc
	for i := range rows {
		r := &rows[i]
		if r.ReasonCode == ReasonNoEndpoints {
			continue
		}
		k := svc{r.Service.Namespace, r.Service.Name}
		if protos[k] == nil {
			protos[k] = map[string]bool{}
			order = append(order, k)
		}
		protos[k][r.Proto()] = true
	}
	for _, k := range order {
		for _, p := range []string{"udp", "sctp"} {
			if protos[k][p] {
				fmt.Fprintf(c.cfg.Stderr, "to clear them: proxy conntrack flush --service %s/%s --protocol %s\n", k.ns, k.name, p)
			}
		}
	}
}

func (c *CLI) runFlush(ctx context.Context, o *options) error {
	v, rows, ct, err := c.rows(ctx, o, false)
	if err != nil {
		return err
	}
	defer ct.Close()
	what := fmt.Sprintf("Service %s/%s", o.filter.Namespace, o.filter.Name)
	if o.filter.Port != "" {
		what += " port " + o.filter.Port
	}
	deleted := 0
	if !o.dryRun && len(rows) > 0 {
		flows := make([]conntrack.Flow, len(rows))
		for i := range rows {
			flows[i] = rows[i].Flow
		}
		n, err := ct.Delete(flows)
		deleted = n
		if err != nil {
			return kernelError(fmt.Sprintf("deleted %d of %d conntrack entries of %s, then", n, len(rows), what), err)
		}
	}
	if o.output == FormatJSON {
		d := jsonDoc(v, rows)
		d.DryRun, d.Deleted = &o.dryRun, &deleted
		return writeJSON(c.cfg.Stdout, d)
	}
	if len(rows) == 0 {
		fmt.Fprintf(c.cfg.Stdout, "no conntrack entries of %s to delete\n", what)
		return nil
	}
	table := listTable
	if o.output == FormatWide {
		table = listWide
	}
	if err := writeTable(c.cfg.Stdout, table, rows); err != nil {
		return err
	}
	switch {
	case o.dryRun:
		fmt.Fprintf(c.cfg.Stdout, "dry run: would delete %d conntrack %s of %s; nothing was deleted\n", len(rows), plural(len(rows)), what)
	case deleted == len(rows):
		fmt.Fprintf(c.cfg.Stdout, "deleted %d conntrack %s of %s\n", deleted, plural(deleted), what)
	default:
		fmt.Fprintf(c.cfg.Stdout, "deleted %d conntrack %s of %s (%d had already gone)\n", deleted, plural(deleted), what, len(rows)-deleted)
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return "entry"
	}
	return "entries"
}

func (c *CLI) runWatch(ctx context.Context, o *options) error {
	src, v, err := c.load(ctx, o)
	if err != nil {
		return err
	}
	defer src.Close()
	ct, err := c.openConntrack()
	if err != nil {
		return err
	}
	defer ct.Close()
	a := c.annotator(v)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan conntrack.Event, 1024)
	watchErr := make(chan error, 1)
	go func() { watchErr <- ct.Watch(wctx, 0, o.types, events) }()

	var tick <-chan time.Time
	if o.refresh > 0 {
		t := time.NewTicker(o.refresh)
		defer t.Stop()
		tick = t.C
	}
	if o.output == FormatTable {
		writeWatchHeader(c.cfg.Stdout)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				return nil
			}
			return kernelError("watching conntrack events", err)
		case <-tick:
			lctx, lcancel := context.WithTimeout(ctx, o.timeout)
			nv, err := src.Load(lctx)
			lcancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				fmt.Fprintf(c.cfg.Stderr, "warning: refreshing Service data: %v (keeping the previous data)\n", err)
				continue
			}
			a = c.annotator(nv)
		case ev := <-events:
			r, ok := a.Annotate(&ev.Flow)
			if !ok || !o.filter.Match(&r) {
				continue
			}
			if o.output == FormatJSON {
				j := jsonRow(&r)
				j.Event = eventName(ev.Type)
				if err := writeJSONLine(c.cfg.Stdout, j); err != nil {
					return err
				}
				continue
			}
			writeWatchLine(c.cfg.Stdout, ev.Type, &r)
		}
	}
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
