package ctcli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/kpr-proxy/kpr/internal/conntrack"
)

// Output formats (-o).
const (
	FormatTable = "table"
	FormatWide  = "wide"
	FormatJSON  = "json"
)

func parseFormat(s string) (string, error) {
	switch s {
	case FormatTable, FormatWide, FormatJSON:
		return s, nil
	}
	return "", fmt.Errorf("unknown output format %q (want table, wide or json)", s)
}

// JSONRow is the JSON form of a Row (list, stale, flush and, with an
// "event" field, watch).
type JSONRow struct {
	Event       string   `json:"event,omitempty"`
	Service     string   `json:"service"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	PortName    string   `json:"portName,omitempty"`
	Port        uint16   `json:"port"`
	Protocol    string   `json:"protocol"`
	Family      string   `json:"family"`
	Via         string   `json:"via"`
	Client      string   `json:"client"`
	Frontend    string   `json:"frontend"`
	Endpoint    string   `json:"endpoint"`
	DNATed      bool     `json:"dnat"`
	EPState     string   `json:"endpointState"`
	Pod         string   `json:"pod,omitempty"`
	Node        string   `json:"node,omitempty"`
	ReplyDst    string   `json:"replyDestination"`
	State       []string `json:"state"`
	Timeout     uint32   `json:"timeoutSeconds"`
	ID          uint32   `json:"id"`
	Mark        uint32   `json:"mark,omitempty"`
	Zone        uint16   `json:"zone,omitempty"`
	ReasonCode  string   `json:"reasonCode,omitempty"`
	Reason      string   `json:"reason,omitempty"`
	Conntrack   string   `json:"conntrack"`
	PacketsOrig uint64   `json:"packetsOriginal,omitempty"`
	BytesOrig   uint64   `json:"bytesOriginal,omitempty"`
	PacketsRepl uint64   `json:"packetsReply,omitempty"`
	BytesRepl   uint64   `json:"bytesReply,omitempty"`
}

// JSONDoc is the JSON output of list and stale; flush adds its counts.
type JSONDoc struct {
	Source  string    `json:"source"`
	Node    string    `json:"node,omitempty"`
	DryRun  *bool     `json:"dryRun,omitempty"`
	Deleted *int      `json:"deleted,omitempty"`
	Entries []JSONRow `json:"entries"`
}

func jsonRow(r *Row) JSONRow {
	fl := &r.Flow
	return JSONRow{
		Service: r.Service.String(), Namespace: r.Service.Namespace, Name: r.Service.Name, PortName: r.Service.Port,
		Port: r.Port, Protocol: r.Proto(), Family: r.Family.String(), Via: r.Via,
		Client: r.Client.String(), Frontend: r.Frontend.String(), Endpoint: r.Endpoint.String(), DNATed: r.NATed(),
		EPState: r.EndpointState, Pod: r.Pod, Node: r.Node, ReplyDst: fl.Reply.DstAddrPort().String(),
		State: r.State(), Timeout: fl.Timeout, ID: fl.ID, Mark: fl.Mark, Zone: fl.Zone,
		ReasonCode: r.ReasonCode, Reason: r.Reason, Conntrack: fl.String(),
		PacketsOrig: fl.PacketsOrig, BytesOrig: fl.BytesOrig, PacketsRepl: fl.PacketsReply, BytesRepl: fl.BytesReply,
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func jsonDoc(v *View, rows []Row) JSONDoc {
	d := JSONDoc{Source: v.Source, Node: v.Node, Entries: make([]JSONRow, 0, len(rows))}
	for i := range rows {
		d.Entries = append(d.Entries, jsonRow(&rows[i]))
	}
	return d
}

// A column of a table: its header and how a row fills it.
type column struct {
	head string
	cell func(*Row) string
}

var (
	colService  = column{"SERVICE", func(r *Row) string { return r.Service.String() }}
	colProto    = column{"PROTO", func(r *Row) string { return r.Proto() }}
	colVia      = column{"VIA", func(r *Row) string { return r.Via }}
	colClient   = column{"CLIENT", func(r *Row) string { return r.Client.String() }}
	colFrontend = column{"FRONTEND", func(r *Row) string { return r.Frontend.String() }}
	colEndpoint = column{"ENDPOINT", endpointCell}
	colEPState  = column{"EP-STATE", func(r *Row) string { return r.EndpointState }}
	colPod      = column{"POD", podCell}
	colNode     = column{"NODE", func(r *Row) string { return dash(r.Node) }}
	colState    = column{"STATE", func(r *Row) string { return strings.Join(r.State(), ",") }}
	colTimeout  = column{"TIMEOUT", func(r *Row) string { return FormatTimeout(r.Flow.Timeout) }}
	colReplyDst = column{"REPLY-DST", func(r *Row) string { return r.Flow.Reply.DstAddrPort().String() }}
	colID       = column{"ID", func(r *Row) string { return strconv.FormatUint(uint64(r.Flow.ID), 10) }}
	colMark     = column{"MARK", func(r *Row) string { return fmt.Sprintf("%#x", r.Flow.Mark) }}
	colZone     = column{"ZONE", func(r *Row) string { return strconv.Itoa(int(r.Flow.Zone)) }}
	colCode     = column{"CODE", func(r *Row) string { return r.ReasonCode }}
	colReason   = column{"REASON", func(r *Row) string { return r.Reason }}
)

func endpointCell(r *Row) string {
	if !r.NATed() {
		return "<not DNATed>"
	}
	return r.Endpoint.String()
}

func podCell(r *Row) string {
	switch r.EndpointState {
	case EPGone:
		return "<gone>"
	case EPNotDNATed:
		return "-"
	}
	return dash(r.Pod)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Table layouts.
var (
	listTable  = []column{colService, colProto, colClient, colFrontend, colEndpoint, colPod, colNode, colState, colTimeout}
	listWide   = []column{colService, colProto, colVia, colClient, colFrontend, colEndpoint, colEPState, colPod, colNode, colState, colTimeout, colReplyDst, colID, colMark, colZone}
	staleTable = []column{colService, colProto, colClient, colFrontend, colEndpoint, colTimeout, colReason}
	staleWide  = []column{colService, colProto, colVia, colClient, colFrontend, colEndpoint, colEPState, colPod, colNode, colState, colTimeout, colID, colCode, colReason}
)

func writeTable(w io.Writer, cols []column, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	cells := make([]string, len(cols))
	for i, c := range cols {
		cells[i] = c.head
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
	for i := range rows {
		for j, c := range cols {
			cells[j] = c.cell(&rows[i])
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// FormatTimeout renders a remaining lifetime compactly: 29s, 4m12s, 3h04m,
// 4d23h.
func FormatTimeout(s uint32) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// Watch lines are printed as events arrive, so they cannot be aligned by a
// tabwriter; fixed widths fit the common cases and never truncate.
const watchLineFmt = "%-7s  %-30s  %-5s  %-22s  %-22s  %-22s  %-24s  %-10s  %-20s  %s\n"

func writeWatchHeader(w io.Writer) {
	fmt.Fprintf(w, watchLineFmt, "EVENT", "SERVICE", "PROTO", "CLIENT", "FRONTEND", "ENDPOINT", "POD", "NODE", "STATE", "TIMEOUT")
}

func writeWatchLine(w io.Writer, ev conntrack.EventType, r *Row) {
	fmt.Fprintf(w, watchLineFmt, eventName(ev), r.Service.String(), r.Proto(), r.Client, r.Frontend, endpointCell(r),
		podCell(r), dash(r.Node), strings.Join(r.State(), ","), FormatTimeout(r.Flow.Timeout))
}

func eventName(t conntrack.EventType) string {
	switch t {
	case conntrack.EventNew:
		return "NEW"
	case conntrack.EventUpdate:
		return "UPDATE"
	case conntrack.EventDestroy:
		return "DESTROY"
	}
	return t.String()
}
