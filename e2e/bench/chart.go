package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// A small hand-written SVG bar chart: panels of grouped bars (kpr vs
// upstream) on a log scale, one group per (backend, N).

// Bar is one value; DNF draws a hatched bar at the cap with "DNF".
type Bar struct {
	Value float64
	DNF   bool
}

// Group is the bars of one x position, in Series order.
type Group struct {
	Label string
	Bars  []Bar
}

// Panel is one chart.
type Panel struct {
	Title  string
	Unit   string
	Groups []Group
}

// Series names and colours, in bar order.
var (
	seriesNames  = []string{ProxyKpr, "upstream kube-proxy"}
	seriesColors = []string{"#1f77b4", "#ff7f0e"}
)

const (
	panelW, panelH   = 560, 300
	marginL, marginR = 64, 16
	marginT, marginB = 36, 64
	cols             = 2
)

// RenderSVG draws panels in a grid with a title and legend.
func RenderSVG(title string, panels []Panel) string {
	rows := (len(panels) + cols - 1) / cols
	w := cols * panelW
	h := 56 + rows*panelH
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", w, h, w, h)
	b.WriteString(`<defs><pattern id="dnf" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#c00" stroke-width="2"/></pattern></defs>` + "\n")
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="15" font-weight="bold" text-anchor="middle">%s</text>`+"\n", w/2, esc(title))
	lx := w/2 - 150
	for i, name := range seriesNames {
		x := lx + i*170
		fmt.Fprintf(&b, `<rect x="%d" y="30" width="12" height="12" fill="%s"/><text x="%d" y="40">%s</text>`+"\n", x, seriesColors[i], x+16, esc(name))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="30" width="12" height="12" fill="url(#dnf)" stroke="#c00"/><text x="%d" y="40">did not finish (bar = cap)</text>`+"\n", lx+340, lx+356)
	for i, p := range panels {
		ox := (i % cols) * panelW
		oy := 56 + (i/cols)*panelH
		renderPanel(&b, p, ox, oy)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func renderPanel(b *strings.Builder, p Panel, ox, oy int) {
	plotW := panelW - marginL - marginR
	plotH := panelH - marginT - marginB
	px, py := ox+marginL, oy+marginT
	fmt.Fprintf(b, `<g><text x="%d" y="%d" font-size="13" font-weight="bold" text-anchor="middle">%s (%s, log scale)</text>`+"\n", ox+panelW/2, oy+20, esc(p.Title), esc(p.Unit))
	lo, hi, ok := logRange(p)
	if !ok {
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" fill="#888">no data</text></g>`+"\n", px+plotW/2, py+plotH/2)
		return
	}
	y := func(v float64) float64 {
		f := (math.Log10(v) - lo) / (hi - lo)
		return float64(py+plotH) - f*float64(plotH)
	}
	// Grid lines at each decade, and at 2× and 5× when the range is short.
	steps := []float64{1}
	if hi-lo <= 2 {
		steps = []float64{1, 2, 5}
	}
	for d := math.Floor(lo); d <= hi+1e-9; d++ {
		for _, s := range steps {
			v := s * math.Pow(10, d)
			if math.Log10(v) < lo-1e-9 || math.Log10(v) > hi+1e-9 {
				continue
			}
			yy := y(v)
			fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n",
				px, yy, px+plotW, yy, px-4, yy+4, esc(formatTick(v)))
		}
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", px, py+plotH, px+plotW, py+plotH)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", px, py, px, py+plotH)
	n := len(p.Groups)
	if n == 0 {
		b.WriteString("</g>\n")
		return
	}
	gw := float64(plotW) / float64(n)
	bw := math.Min(28, gw*0.8/float64(len(seriesNames)))
	for gi, g := range p.Groups {
		gx := float64(px) + gw*float64(gi) + gw/2
		start := gx - bw*float64(len(g.Bars))/2
		for bi, bar := range g.Bars {
			if bar.Value <= 0 || math.IsNaN(bar.Value) {
				continue
			}
			x := start + bw*float64(bi)
			top := y(bar.Value)
			fill := seriesColors[bi%len(seriesColors)]
			label := formatValue(bar.Value)
			if bar.DNF {
				fill = "url(#dnf)"
				label = "DNF"
			}
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="%s"><title>%s %s: %s %s</title></rect>`+"\n",
				x, top, bw-2, float64(py+plotH)-top, fill, seriesColors[bi%len(seriesColors)], esc(seriesNames[bi%len(seriesNames)]), esc(g.Label), esc(label), esc(p.Unit))
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle">%s</text>`+"\n", x+(bw-2)/2, top-3, esc(label))
		}
		lines := strings.Split(g.Label, "\n")
		for li, l := range lines {
			fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", gx, py+plotH+14+12*li, esc(l))
		}
	}
	b.WriteString("</g>\n")
}

// logRange is the panel's y range in log10 units, whole decades around the
// data.
func logRange(p Panel) (lo, hi float64, ok bool) {
	minV, maxV := math.Inf(1), math.Inf(-1)
	for _, g := range p.Groups {
		for _, bar := range g.Bars {
			if bar.Value > 0 && !math.IsNaN(bar.Value) && !math.IsInf(bar.Value, 0) {
				minV = math.Min(minV, bar.Value)
				maxV = math.Max(maxV, bar.Value)
			}
		}
	}
	if math.IsInf(minV, 1) {
		return 0, 0, false
	}
	lo = math.Floor(math.Log10(minV))
	hi = math.Ceil(math.Log10(maxV * 1.5))
	if hi <= lo {
		hi = lo + 1
	}
	return lo, hi, true
}

func formatTick(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func esc(s string) string { return html.EscapeString(s) }
