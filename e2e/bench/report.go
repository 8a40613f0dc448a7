package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// find returns the result for (mode, backend, proxy, n), or nil.
func (rep *Report) find(mode, backend, proxy string, n int) *Result {
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.Mode == mode && r.Backend == backend && r.Proxy == proxy && r.N == n {
			return r
		}
	}
	return nil
}

// cell is one table value.
type cell struct {
	v    float64 // NaN: not measured
	text string
	dnf  bool
}

func missing() cell { return cell{v: math.NaN(), text: "—"} }

// metric is one row kind of the per-backend tables.
type metric struct {
	name string
	// baseline: also shown at the baseline-only N.
	baseline bool
	get      func(r *Result) cell
}

// usageCell is a CPU or memory figure; for a run cut off at its cap it is
// what the proxy had used by then.
func usageCell(r *Result, v float64, format string) cell {
	c := num(v, format)
	if !r.ColdSync.Finished && !math.IsNaN(c.v) {
		c.text += " (at the cap)"
		c.dnf = true
	}
	return c
}

// batches notes how many restores a figure adds up.
func batches(c cell, count int) cell {
	if count > 1 && !math.IsNaN(c.v) {
		c.text += fmt.Sprintf(" (%d restores)", count)
	}
	return c
}

func num(v float64, format string) cell {
	if math.IsNaN(v) || v == 0 {
		return missing()
	}
	return cell{v: v, text: fmt.Sprintf(format, v)}
}

func bytesCell(v float64) cell {
	if math.IsNaN(v) || v == 0 {
		return missing()
	}
	return cell{v: v, text: humanBytes(int64(v))}
}

func coldSyncCell(r *Result) cell {
	if r.ColdSync.Finished {
		return num(r.ColdSync.Seconds, "%.2f")
	}
	if r.Error == "" && r.ColdSync.TimeoutSeconds > 0 {
		d := time.Duration(r.ColdSync.TimeoutSeconds * float64(time.Second))
		return cell{v: r.ColdSync.TimeoutSeconds, text: "did not finish in " + d.String(), dnf: true}
	}
	return missing()
}

// Names of the metrics the summary and the chart pick.
const (
	mColdSync     = "cold full sync (s)"
	mChangeMedian = "one-change latency, median (ms)"
	mChangeP90    = "one-change latency, p90 (ms)"
	mCPUWhole     = "proxy CPU, whole run (s)"
	mRSS          = "peak RSS (MB)"
	mFirstPacket  = "first packet: connect to ClusterIP, median (µs)"
)

var summaryMetrics = []string{mColdSync, mChangeMedian, mChangeP90, mRSS, mCPUWhole, mFirstPacket}

func metricNamed(name string) metric {
	for _, m := range metrics {
		if m.name == name {
			return m
		}
	}
	panic("bench: no metric " + name)
}

var metrics = []metric{
	{mColdSync, true, coldSyncCell},
	{mChangeMedian, false, func(r *Result) cell {
		if r.Changes == nil {
			return missing()
		}
		return num(r.Changes.MedianMs, "%.1f")
	}},
	{mChangeP90, false, func(r *Result) cell {
		if r.Changes == nil {
			return missing()
		}
		return num(r.Changes.P90Ms, "%.1f")
	}},
	{"proxy CPU to cold sync (s)", true, func(r *Result) cell {
		if r.UsageAtSync == nil {
			return missing()
		}
		return num(r.UsageAtSync.SelfSec(), "%.2f")
	}},
	{mCPUWhole, true, func(r *Result) cell {
		if r.UsageEnd == nil {
			return missing()
		}
		return usageCell(r, r.UsageEnd.SelfSec(), "%.2f")
	}},
	{"children CPU (iptables-restore etc.), whole run (s)", true, func(r *Result) cell {
		if r.UsageEnd == nil {
			return missing()
		}
		if !r.ColdSync.Finished {
			// A child's CPU time reaches cutime only once it is
			// reaped, and the capped restore never was.
			return cell{v: math.NaN(), text: "— (restore still running at the cap)"}
		}
		return usageCell(r, r.UsageEnd.ChildrenSec, "%.2f")
	}},
	{mRSS, true, func(r *Result) cell {
		if r.UsageEnd == nil {
			return missing()
		}
		return usageCell(r, float64(r.UsageEnd.PeakRSSBytes)/1e6, "%.0f")
	}},
	// A full sync may be split into several restores (kpr on nf_tables
	// batches 250 Service ports per restore): the figures are totals.
	{"full sync: iptables-restore input, IPv4 (lines)", true, func(r *Result) cell {
		return batches(num(float64(r.FullV4.Lines), "%.0f"), r.FullV4.Count)
	}},
	{"full sync: iptables-restore input, IPv4 (bytes)", true, func(r *Result) cell {
		return batches(bytesCell(float64(r.FullV4.Bytes)), r.FullV4.Count)
	}},
	{"full sync: time in iptables-restore, IPv4 (ms)", true, func(r *Result) cell {
		return num(float64(r.FullV4.DurationMs), "%.0f")
	}},
	{"partial sync per change: restore input (lines, median)", false, func(r *Result) cell {
		if r.Changes == nil {
			return missing()
		}
		return num(r.Changes.MedianLines, "%.0f")
	}},
	{"partial sync per change: restore input (bytes, median)", false, func(r *Result) cell {
		if r.Changes == nil {
			return missing()
		}
		return bytesCell(r.Changes.MedianBytes)
	}},
	{"partial sync: time in iptables-restore (ms, median)", false, func(r *Result) cell {
		if r.Changes == nil {
			return missing()
		}
		return num(r.Changes.RestoreMedianDurMs, "%.0f")
	}},
	{mFirstPacket, true, func(r *Result) cell {
		if r.FirstPacket == nil {
			return missing()
		}
		return num(r.FirstPacket.MedianUs, "%.0f")
	}},
	{"first packet: connect to ClusterIP, p90 (µs)", true, func(r *Result) cell {
		if r.FirstPacket == nil {
			return missing()
		}
		return num(r.FirstPacket.P90Us, "%.0f")
	}},
	{"reference: connect to the echo pod IP (no DNAT), median (µs)", true, func(r *Result) cell {
		if r.Direct == nil {
			return missing()
		}
		return num(r.Direct.MedianUs, "%.0f")
	}},
	{"rules in the nat table after cold sync", true, func(r *Result) cell {
		return num(float64(r.ColdSync.Check.Rules), "%.0f")
	}},
}

func ratioText(a, b cell) string {
	if a.dnf || b.dnf {
		if b.dnf && !a.dnf && !math.IsNaN(a.v) {
			return fmt.Sprintf("< %.3f×", a.v/b.v)
		}
		return "—"
	}
	r := Ratio(a.v, b.v)
	if math.IsNaN(r) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", r)
}

// sections are the (mode, backend) pairs with results, in run order.
func (rep *Report) sections() [][2]string {
	var out [][2]string
	for _, r := range rep.Results {
		k := [2]string{r.Mode, r.Backend}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func (rep *Report) ns() []int {
	var out []int
	for _, r := range rep.Results {
		if !slices.Contains(out, r.N) {
			out = append(out, r.N)
		}
	}
	slices.Sort(out)
	return out
}

func (rep *Report) baselineOnly(n int) bool {
	for _, r := range rep.Results {
		if r.N == n {
			return r.BaselineOnly
		}
	}
	return false
}

func backendTitle(mode, backend string) string {
	if mode == ModeIPVS {
		return "IPVS mode (iptables " + backend + " for the helper rules)"
	}
	if backend == BackendNFT {
		return "iptables mode, nf_tables backend (iptables-nft)"
	}
	return "iptables mode, legacy backend (iptables-legacy)"
}

func fmtN(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// Markdown renders results.md.
func (rep *Report) Markdown() string {
	var b strings.Builder
	m := rep.Machine
	b.WriteString("# kpr vs upstream kube-proxy: `make bench`\n\n")
	fmt.Fprintf(&b, "Run %s → %s (%s). Machine: %s, %d CPUs, %s RAM, kernel %s. Load average at start %s, at end %s.\n\n",
		rep.Started, rep.Finished, (time.Duration(rep.DurationSec) * time.Second).String(), m.CPU, m.CPUs, m.MemTotal, m.Kernel, m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(&b, "kpr: `%s`. Upstream: `%s`. %s.\n\n", m.KprVersion, m.UpstreamVersion, m.GoVersion)
	var ipt []string
	for _, k := range sortedKeys(m.IPTables) {
		ipt = append(ipt, fmt.Sprintf("%s: `%s`", k, m.IPTables[k]))
	}
	if len(ipt) > 0 {
		fmt.Fprintf(&b, "iptables: %s.\n\n", strings.Join(ipt, "; "))
	}
	fmt.Fprintf(&b, "Workload: selector-less ClusterIP Services with one TCP port and a hand-made EndpointSlice of %d dummy endpoints each (addresses that never see traffic; `nodeName` spread over %d fictitious nodes, none of them the node under test, as in a large cluster), plus one Service whose single endpoint is a real echo pod. Both proxies run, one after the other, in the same node namespace against the same apiserver with the same flags (`framework.StandardProxyArgs`: `--proxy-mode=iptables --cluster-cidr=… --conntrack-max-per-core=0 --v=2`, defaults otherwise, so `--iptables-min-sync-period=1s`), plus `--iptables-backend` for kpr; upstream gets the same backend from the `iptables*` on its PATH.\n\n",
		rep.Config.EndpointsPerService, BenchNodes)
	for _, s := range rep.Skipped {
		fmt.Fprintf(&b, "**Skipped:** %s\n\n", s)
	}
	if len(rep.SetupSec) > 0 {
		var parts []string
		for _, n := range sortedIntKeys(rep.SetupSec) {
			parts = append(parts, fmt.Sprintf("up to %s in %.0f s", fmtN(n), rep.SetupSec[n]))
		}
		fmt.Fprintf(&b, "Creating the Services and EndpointSlices: %s.\n\n", strings.Join(parts, ", "))
	}

	rep.writeSummary(&b)

	for _, sec := range rep.sections() {
		fmt.Fprintf(&b, "## %s\n\n", backendTitle(sec[0], sec[1]))
		b.WriteString("| Services | metric | kpr | upstream | kpr ÷ upstream |\n| ---: | --- | ---: | ---: | ---: |\n")
		for _, n := range rep.ns() {
			kpr := rep.find(sec[0], sec[1], ProxyKpr, n)
			up := rep.find(sec[0], sec[1], ProxyUpstream, n)
			if kpr == nil && up == nil {
				continue
			}
			for _, mt := range metrics {
				if rep.baselineOnly(n) && !mt.baseline {
					continue
				}
				a, c := missing(), missing()
				if kpr != nil {
					a = mt.get(kpr)
				}
				if up != nil {
					c = mt.get(up)
				}
				if math.IsNaN(a.v) && math.IsNaN(c.v) && !a.dnf && !c.dnf {
					continue
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", fmtN(n), mt.name, a.text, c.text, ratioText(a, c))
			}
		}
		b.WriteString("\n")
	}

	var errs []string
	for _, r := range rep.Results {
		if r.Error != "" {
			first, _, _ := strings.Cut(r.Error, "\n")
			errs = append(errs, fmt.Sprintf("- %s: %s (log: `%s`)", label(r), first, r.LogPath))
		}
	}
	if len(errs) > 0 {
		b.WriteString("## Errors\n\n" + strings.Join(errs, "\n") + "\n\n")
	}
	b.WriteString(methodText)
	return b.String()
}

// writeSummary is the headline table: the figures at the largest N and the
// first-packet growth from the baseline N, with no verdicts.
func (rep *Report) writeSummary(b *strings.Builder) {
	ns := rep.ns()
	if len(ns) == 0 {
		return
	}
	top := ns[len(ns)-1]
	base := 0
	if rep.Config.BaselineN > 0 && slices.Contains(ns, rep.Config.BaselineN) && rep.Config.BaselineN != top {
		base = rep.Config.BaselineN
	}
	fmt.Fprintf(b, "## Summary at %s Services × %d endpoints\n\n", fmtN(top), rep.Config.EndpointsPerService)
	b.WriteString("| figure | backend | kpr | upstream | kpr ÷ upstream |\n| --- | --- | ---: | ---: | ---: |\n")
	for _, name := range summaryMetrics {
		mt := metricNamed(name)
		for _, sec := range rep.sections() {
			kpr := rep.find(sec[0], sec[1], ProxyKpr, top)
			up := rep.find(sec[0], sec[1], ProxyUpstream, top)
			a, c := missing(), missing()
			if kpr != nil {
				a = mt.get(kpr)
			}
			if up != nil {
				c = mt.get(up)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", mt.name, sectionLabel(sec), a.text, c.text, ratioText(a, c))
		}
	}
	if base > 0 {
		for _, sec := range rep.sections() {
			var parts [2]string
			for i, proxy := range []string{ProxyKpr, ProxyUpstream} {
				hiR, loR := rep.find(sec[0], sec[1], proxy, top), rep.find(sec[0], sec[1], proxy, base)
				parts[i] = "—"
				if hiR != nil && loR != nil && hiR.FirstPacket != nil && loR.FirstPacket != nil && loR.FirstPacket.MedianUs > 0 {
					parts[i] = fmt.Sprintf("%.2f× (%.0f → %.0f µs)", hiR.FirstPacket.MedianUs/loR.FirstPacket.MedianUs, loR.FirstPacket.MedianUs, hiR.FirstPacket.MedianUs)
				}
			}
			fmt.Fprintf(b, "| first packet at %s ÷ at %s Services | %s | %s | %s | |\n", fmtN(top), fmtN(base), sectionLabel(sec), parts[0], parts[1])
		}
	}
	b.WriteString("\n![chart](chart.svg)\n\n")
}

func sectionLabel(sec [2]string) string {
	if sec[0] == ModeIPVS {
		return "ipvs"
	}
	return sec[1]
}

// Panels builds the chart's panels.
func (rep *Report) Panels() []Panel {
	defs := []struct {
		title, unit string
		mt          metric
	}{
		{"Cold full sync", "s", metricNamed(mColdSync)},
		{"One-change latency, median", "ms", metricNamed(mChangeMedian)},
		{"Peak RSS", "MB", metricNamed(mRSS)},
		{"First packet to a ClusterIP, median", "µs", metricNamed(mFirstPacket)},
	}
	var out []Panel
	for _, d := range defs {
		p := Panel{Title: d.title, Unit: d.unit}
		for _, sec := range rep.sections() {
			for _, n := range rep.ns() {
				if rep.baselineOnly(n) && !d.mt.baseline {
					continue
				}
				g := Group{Label: fmt.Sprintf("%s\n%s", sectionLabel(sec), fmtN(n))}
				any := false
				for _, proxy := range []string{ProxyKpr, ProxyUpstream} {
					bar := Bar{}
					if r := rep.find(sec[0], sec[1], proxy, n); r != nil {
						c := d.mt.get(r)
						if !math.IsNaN(c.v) {
							bar = Bar{Value: c.v, DNF: c.dnf}
							any = true
						}
					}
					g.Bars = append(g.Bars, bar)
				}
				if any {
					p.Groups = append(p.Groups, g)
				}
			}
		}
		out = append(out, p)
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortedIntKeys(m map[int]float64) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

const methodText = `## How each figure is measured

- **Cold full sync**: from just before the proxy process is started to the first new TCP connection from a client
  pod (node1) through the echo Service's ClusterIP that gets an answer. Probes are new connections (new source
  port, so a fresh NAT decision by whatever rules the kernel holds at that moment) every 5 ms, each waiting up to
  20 ms (a SYN to a ClusterIP without rules is silently dropped by the sink router). iptables-restore commits a
  table atomically, so the batch that carries the echo Service carries the others; one ` + "`iptables-save -t nat`" + `
  right after the answer (not timed) checks that every Service has its "-d <ClusterIP>/32 --dport 80 -j
  KUBE-SVC-…/KPR-SVC-…" rule (kpr's dispatch tree keeps such an exact rule at its leaves). If it did not, the bench
  polls iptables-save every 2 s and reports that time instead (raw.json: ` + "`verified_by`" + `). The same probe works for both
  proxies and both backends, and costs little CPU, unlike iptables-save polling (~0.5 s of CPU per read of a legacy
  nat table at 10k Services). The shim's end time of the last restore before the answer is in raw.json as a
  cross-check (` + "`last_restore_end_seconds`" + `). Upstream on nf_tables is capped by BENCH_UPSTREAM_NFT_TIMEOUT.
- **One-change latency**: the echo Service's EndpointSlice is switched between two echo pods (one API Update);
  from just before the Update call to the first new connection through the ClusterIP answered by the new pod
  (probes every 5 ms, so ±5 ms). Changes are paced 1.5 s apart (above the 1 s min sync period) and start once
  the proxy has been idle for 3 s. Median and p90 over BENCH_CHANGES changes.
- **CPU and peak RSS**: ` + "`/proc/<pid>/stat`" + ` utime+stime (the proxy itself) and cutime+cstime (its waited-for children:
  iptables-restore, iptables, ipset…), and ` + "`VmHWM`" + ` from ` + "`/proc/<pid>/status`" + `, at cold sync and at the end of the run
  (after the changes and the connects).
- **iptables-restore input**: a shim placed first on PATH in the node namespace for both proxies (as
  ` + "`iptables-restore`, `ip6tables-restore`" + ` and the ` + "`-legacy`/`-nft`" + ` suffixed names kpr looks up) records each
  restore's stdin size, line count and duration, then runs the real one. "Full sync" is the largest IPv4 restore
  before cold sync; "partial" is what was restored between a change's write and its answer.
- **First packet**: BENCH_CONNECTS blocking connect() calls (after 50 warm-up ones), each a new socket and source
  port, closed with RST; the time connect() takes (SYN out, SYN-ACK back) from a client pod on node1 to a
  ClusterIP (DNAT to an echo pod on node2). The connects go in turn to the echo Service and BENCH_PROBE_SERVICES
  probe Services that also point at an echo pod: upstream writes KUBE-SERVICES in Go map order, different at every
  sync, so one Service's place in that linear chain is luck; several average it out. For reference, the same
  connects to the echo pod's own IP: no DNAT, but every nat PREROUTING rule is still tried, which for upstream is
  the whole KUBE-SERVICES chain (its worst case).
- Between runs the node's rules (both backends, both families) are reset to what they were before any proxy ran,
  and conntrack is flushed.
`
