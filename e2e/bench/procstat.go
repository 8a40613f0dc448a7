package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times. It is 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// ProcUsage is a process's CPU time and memory high-water mark.
type ProcUsage struct {
	// UserSec and SysSec are the process's own CPU seconds.
	UserSec float64 `json:"user_sec"`
	SysSec  float64 `json:"sys_sec"`
	// ChildrenSec is CPU seconds of waited-for children (iptables-restore
	// and friends run by the proxy).
	ChildrenSec float64 `json:"children_sec"`
	// PeakRSSBytes is VmHWM: the peak resident set size.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
}

// SelfSec is the process's own CPU seconds.
func (u ProcUsage) SelfSec() float64 { return u.UserSec + u.SysSec }

// ReadProcUsage reads /proc/<pid>/stat and /proc/<pid>/status.
func ReadProcUsage(pid int) (ProcUsage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcUsage{}, err
	}
	u, err := parseStat(string(stat))
	if err != nil {
		return ProcUsage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcUsage{}, err
	}
	if u.PeakRSSBytes, err = parseVmHWM(string(status)); err != nil {
		return ProcUsage{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return u, nil
}

// ProcComm is /proc/<pid>/comm (to check the pid is the proxy, not a
// wrapper).
func ProcComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// parseStat reads utime, stime, cutime, cstime (fields 14–17). The command
// name (field 2) may hold spaces and parentheses, so fields are counted from
// the last ')'.
func parseStat(s string) (ProcUsage, error) {
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return ProcUsage{}, fmt.Errorf("no ')' in %q", s)
	}
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state); field k is f[k-3].
	if len(f) < 17-3+1 {
		return ProcUsage{}, fmt.Errorf("only %d fields after the command", len(f))
	}
	var ticks [4]int64
	for i := range ticks {
		v, err := strconv.ParseInt(f[14-3+i], 10, 64)
		if err != nil {
			return ProcUsage{}, fmt.Errorf("field %d: %w", 14+i, err)
		}
		ticks[i] = v
	}
	return ProcUsage{
		UserSec:     float64(ticks[0]) / clockTicks,
		SysSec:      float64(ticks[1]) / clockTicks,
		ChildrenSec: float64(ticks[2]+ticks[3]) / clockTicks,
	}, nil
}

// parseVmHWM reads "VmHWM:   123456 kB".
func parseVmHWM(s string) (int64, error) {
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("odd VmHWM line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no VmHWM line")
}
