package bench

// Result is everything measured for one proxy at one Service count, mode and
// backend. Zero values mean "not measured"; Error or ColdSync.Finished say
// why.
type Result struct {
	Mode    string `json:"mode"`
	Backend string `json:"backend"`
	Proxy   string `json:"proxy"`
	N       int    `json:"services"`
	// EndpointsPerService is the dummy Services' endpoint count.
	EndpointsPerService int `json:"endpoints_per_service"`
	// BaselineOnly: only cold sync and first-packet latency were run.
	BaselineOnly bool `json:"baseline_only,omitempty"`
	// Error is set when the run failed (the rest may be partial).
	Error string `json:"error,omitempty"`

	ColdSync ColdSync     `json:"cold_sync"`
	Changes  *ChangeStats `json:"changes,omitempty"`
	// FirstPacket is TCP connect latency from a client pod to the echo
	// Service's ClusterIP; Direct to the echo pod's own IP, through the same
	// node (still walking the nat PREROUTING chains, but no DNAT).
	FirstPacket *LatencyStats `json:"first_packet_clusterip,omitempty"`
	Direct      *LatencyStats `json:"first_packet_pod_ip,omitempty"`

	// UsageAtSync is the proxy's CPU and peak RSS when its rules were in
	// the kernel; UsageEnd at the end of its run (cold sync, changes,
	// connects).
	UsageAtSync *ProcUsage `json:"usage_at_sync,omitempty"`
	UsageEnd    *ProcUsage `json:"usage_end,omitempty"`
	// DurationSec is how long the proxy ran in all.
	DurationSec float64 `json:"duration_sec"`

	// Full* are the iptables-restore runs from start to cold sync, per
	// family, as the shim saw them.
	FullV4 RestoreStats `json:"full_sync_restores_v4"`
	FullV6 RestoreStats `json:"full_sync_restores_v6"`
	// ProxyMetrics are selected counters from the proxy's /metrics at the
	// end (kpr_iptables_restore_*, kubeproxy_sync_*_duration_seconds).
	ProxyMetrics map[string]float64 `json:"proxy_metrics,omitempty"`
	// LogPath is the proxy's log; ShimLog its iptables-restore log.
	LogPath string `json:"log_path"`
	ShimLog string `json:"shim_log"`
}

// ColdSync is process start → every Service's rules in the kernel.
type ColdSync struct {
	Finished bool `json:"finished"`
	// Seconds from process start to the first probe through the echo
	// Service's ClusterIP that got an answer (iptables-restore is atomic
	// per table, so the batch holding that rule holds the rest), or to the
	// first complete iptables-save when the save after the probe lacked
	// Services (VerifiedBy says which).
	Seconds float64 `json:"seconds"`
	// TimeoutSeconds is the cap the run had.
	TimeoutSeconds float64 `json:"timeout_seconds"`
	// LastRestoreEndSec is when the last IPv4 iptables-restore started
	// before that moment ended (from the shim), a cross-check: it can be a
	// little later, as the kernel has the rules before the process exits.
	LastRestoreEndSec float64 `json:"last_restore_end_seconds"`
	Probes            int     `json:"probes"`
	VerifiedBy        string  `json:"verified_by"`
	// Check is the verification read of the kernel.
	Check NATCheck `json:"check"`
}

// ChangeStats is the one-change programming latency: EndpointSlice write
// (just before the Update call) → first new connection answered by the new
// endpoint.
type ChangeStats struct {
	SamplesMs []float64 `json:"samples_ms"`
	MedianMs  float64   `json:"median_ms"`
	P90Ms     float64   `json:"p90_ms"`
	MinMs     float64   `json:"min_ms"`
	MaxMs     float64   `json:"max_ms"`
	Failures  int       `json:"failures"`
	// APIWriteMs is the median time the Update call itself took.
	APIWriteMs float64 `json:"api_write_median_ms"`
	// Partial syncs: per change, the IPv4 restores between the write and
	// the answer (usually one).
	PartialBytes       []int   `json:"partial_bytes"`
	PartialLines       []int   `json:"partial_lines"`
	MedianBytes        float64 `json:"partial_median_bytes"`
	MedianLines        float64 `json:"partial_median_lines"`
	RestoresPerChange  float64 `json:"restores_per_change"`
	ResolutionMs       float64 `json:"probe_resolution_ms"`
	PacingMs           float64 `json:"pacing_ms"`
	RestoreFailures    int     `json:"restore_failures"`
	RestoreMedianDurMs float64 `json:"restore_median_duration_ms"`
}

// Report is raw.json.
type Report struct {
	Started     string   `json:"started"`
	Finished    string   `json:"finished"`
	DurationSec float64  `json:"duration_sec"`
	Config      Config   `json:"config"`
	Machine     Machine  `json:"machine"`
	Skipped     []string `json:"skipped,omitempty"`
	// SetupSec is how long creating the Services took, per N.
	SetupSec map[int]float64 `json:"setup_sec"`
	Results  []Result        `json:"results"`
	RunDir   string          `json:"cluster_run_dir"`
}

// Machine describes where the numbers come from.
type Machine struct {
	Kernel          string            `json:"kernel"`
	CPU             string            `json:"cpu"`
	CPUs            int               `json:"cpus"`
	MemTotal        string            `json:"mem_total"`
	LoadAvgStart    string            `json:"loadavg_start"`
	LoadAvgEnd      string            `json:"loadavg_end"`
	IPTables        map[string]string `json:"iptables"`
	KprVersion      string            `json:"kpr_version"`
	UpstreamVersion string            `json:"upstream_version"`
	GoVersion       string            `json:"go_version"`
}
