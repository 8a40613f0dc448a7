// Package bench is `make bench`: kpr against upstream kube-proxy v1.37 on the
// same machine, apiserver, node namespace, workload and flags, one after the
// other, for each iptables backend (and IPVS where the kernel has it). It
// measures cold full-sync time, one-change programming latency, proxy CPU and
// peak RSS, what each proxy sends to iptables-restore, and first-packet
// (TCP connect) latency through a ClusterIP, and writes results.md, chart.svg
// and raw.json. See README.md in this directory.
package bench

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Proxies, backends and modes the bench knows.
const (
	ProxyKpr      = "kpr"
	ProxyUpstream = "upstream"

	BackendLegacy = "legacy"
	BackendNFT    = "nft"

	ModeIPTables = "iptables"
	ModeIPVS     = "ipvs"
)

// MaxServices is the largest N: the Service range 198.19.192.0/18 has 16,382
// usable addresses, and the bench keeps the first 256 for the kubernetes
// Service and its own echo Service.
const MaxServices = 16000

// Config is what the BENCH_* environment variables select.
type Config struct {
	// Ns are the Service counts to measure, ascending (BENCH_N).
	Ns []int
	// BaselineN is the small Service count at which first-packet latency is
	// measured as the reference for the larger Ns (BENCH_BASELINE_N; 0 =
	// none). At that N only cold sync and first-packet latency are run,
	// unless it is also in Ns.
	BaselineN int
	// Backends are iptables backends (BENCH_BACKENDS).
	Backends []string
	// Proxies are the proxies, run in this order (BENCH_PROXIES).
	Proxies []string
	// Modes are proxy modes (BENCH_MODES); ipvs is skipped, with the reason
	// printed, where the kernel has no IPVS.
	Modes []string
	// UpstreamNFTTimeout caps upstream kube-proxy's cold sync on nf_tables
	// (BENCH_UPSTREAM_NFT_TIMEOUT), which takes longer than 10 minutes at
	// 10k Services.
	UpstreamNFTTimeout time.Duration
	// SyncTimeout caps every other cold sync (BENCH_SYNC_TIMEOUT).
	SyncTimeout time.Duration
	// Changes is how many one-change latency samples to take (BENCH_CHANGES).
	Changes int
	// Connects is how many TCP connects measure first-packet latency
	// (BENCH_CONNECTS).
	Connects int
	// ProbeServices is how many Services besides the echo one point at a
	// real echo pod and take first-packet connects (BENCH_PROBE_SERVICES).
	ProbeServices int
	// EndpointsPerService is the number of dummy endpoints of each
	// Service's EndpointSlice (BENCH_ENDPOINTS).
	EndpointsPerService int
	// OutDir is the results directory (BENCH_OUT; default
	// e2e/_cache/bench/<timestamp>).
	OutDir string
	// DocsDir receives a copy of results.md, chart.svg and raw.json
	// (BENCH_DOCS_DIR; default <repo>/docs/bench; "none" disables).
	DocsDir string
}

// Env is the environment lookup ParseConfig reads (os.LookupEnv in use).
type Env func(string) (string, bool)

// ParseConfig reads the BENCH_* variables. Every bad value is an error that
// names the variable.
func ParseConfig(env Env) (Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	c := Config{
		Ns:                  []int{1000, 10000},
		BaselineN:           10,
		Backends:            []string{BackendLegacy, BackendNFT},
		Proxies:             []string{ProxyKpr, ProxyUpstream},
		Modes:               []string{ModeIPTables, ModeIPVS},
		UpstreamNFTTimeout:  10 * time.Minute,
		SyncTimeout:         10 * time.Minute,
		Changes:             20,
		Connects:            2000,
		ProbeServices:       16,
		EndpointsPerService: 10,
	}
	var errs []string
	fail := func(name, val string, err error) {
		errs = append(errs, fmt.Sprintf("%s=%q: %v", name, val, err))
	}
	if v, ok := env("BENCH_N"); ok && strings.TrimSpace(v) != "" {
		ns, err := parseCounts(v)
		if err != nil {
			fail("BENCH_N", v, err)
		} else {
			c.Ns = ns
		}
	}
	if v, ok := env("BENCH_BASELINE_N"); ok && strings.TrimSpace(v) != "" {
		if strings.TrimSpace(v) == "0" {
			c.BaselineN = 0
		} else if n, err := parseCount(v); err != nil {
			fail("BENCH_BASELINE_N", v, err)
		} else {
			c.BaselineN = n
		}
	}
	lists := []struct {
		name  string
		dst   *[]string
		valid []string
	}{
		{"BENCH_BACKENDS", &c.Backends, []string{BackendLegacy, BackendNFT}},
		{"BENCH_PROXIES", &c.Proxies, []string{ProxyKpr, ProxyUpstream}},
		{"BENCH_MODES", &c.Modes, []string{ModeIPTables, ModeIPVS}},
	}
	for _, l := range lists {
		v, ok := env(l.name)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		got, err := parseChoices(v, l.valid)
		if err != nil {
			fail(l.name, v, err)
			continue
		}
		*l.dst = got
	}
	durations := []struct {
		name string
		dst  *time.Duration
	}{
		{"BENCH_UPSTREAM_NFT_TIMEOUT", &c.UpstreamNFTTimeout},
		{"BENCH_SYNC_TIMEOUT", &c.SyncTimeout},
	}
	for _, d := range durations {
		v, ok := env(d.name)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		got, err := time.ParseDuration(strings.TrimSpace(v))
		if err == nil && got <= 0 {
			err = fmt.Errorf("must be positive")
		}
		if err != nil {
			fail(d.name, v, err)
			continue
		}
		*d.dst = got
	}
	ints := []struct {
		name     string
		dst      *int
		min, max int
	}{
		{"BENCH_CHANGES", &c.Changes, 1, 1000},
		{"BENCH_CONNECTS", &c.Connects, 10, 100000},
		{"BENCH_ENDPOINTS", &c.EndpointsPerService, 1, 100},
		{"BENCH_PROBE_SERVICES", &c.ProbeServices, 0, 200},
	}
	for _, iv := range ints {
		v, ok := env(iv.name)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err == nil && (n < iv.min || n > iv.max) {
			err = fmt.Errorf("want %d..%d", iv.min, iv.max)
		}
		if err != nil {
			fail(iv.name, v, err)
			continue
		}
		*iv.dst = n
	}
	if v, ok := env("BENCH_OUT"); ok {
		c.OutDir = strings.TrimSpace(v)
	}
	if v, ok := env("BENCH_DOCS_DIR"); ok {
		c.DocsDir = strings.TrimSpace(v)
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("bench configuration: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// Steps returns the Service counts to run, ascending, each with whether the
// full set of measurements runs there (false: baseline only).
func (c Config) Steps() []Step {
	var out []Step
	if c.BaselineN > 0 && !slices.Contains(c.Ns, c.BaselineN) {
		out = append(out, Step{N: c.BaselineN, BaselineOnly: true})
	}
	for _, n := range c.Ns {
		out = append(out, Step{N: n})
	}
	slices.SortFunc(out, func(a, b Step) int { return a.N - b.N })
	return out
}

// Step is one Service count of the run.
type Step struct {
	N int
	// BaselineOnly: only cold sync and first-packet latency.
	BaselineOnly bool
}

// parseCounts parses "1000,5k,10000" into ascending distinct counts.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		n, err := parseCount(f)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Service counts given")
	}
	slices.Sort(out)
	return out, nil
}

// parseCount parses a Service count: "1000", "1k", "10K" (k = 1000).
func parseCount(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	if strings.HasSuffix(s, "k") || strings.HasSuffix(s, "K") {
		mult, s = 1000, s[:len(s)-1]
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a count (e.g. 1000 or 10k)", s)
	}
	n *= mult
	if n < 1 || n > MaxServices {
		return 0, fmt.Errorf("%d Services: want 1..%d (the /18 Service range holds ~16k addresses)", n, MaxServices)
	}
	return n, nil
}

// parseChoices parses a comma list whose items must be in valid; order is
// kept, duplicates dropped.
func parseChoices(s string, valid []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		if !slices.Contains(valid, f) {
			return nil, fmt.Errorf("unknown %q (want some of %s)", f, strings.Join(valid, ","))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	return out, nil
}
