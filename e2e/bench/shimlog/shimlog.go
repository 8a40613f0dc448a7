// Package shimlog is the record the bench's restore shim writes for each
// iptables-restore it stands in for, shared by the shim (which writes it)
// and the bench (which reads it), so the two cannot drift apart.
package shimlog

import "time"

// Entry is one line of the shim log. A restore writes two: Running true when
// it starts (so a restore that takes minutes shows up), then the full one.
type Entry struct {
	Running bool     `json:"running,omitempty"`
	Name    string   `json:"name"`
	V6      bool     `json:"v6"`
	Args    []string `json:"args"`
	Bytes   int      `json:"bytes"`
	Lines   int      `json:"lines"`
	Start   int64    `json:"start_unix_nano"`
	End     int64    `json:"end_unix_nano"`
	Exit    int      `json:"exit"`
}

// StartTime and EndTime are the entry's times.
func (e Entry) StartTime() time.Time { return time.Unix(0, e.Start) }
func (e Entry) EndTime() time.Time   { return time.Unix(0, e.End) }

// Duration is how long the real iptables-restore ran (plus reading stdin).
func (e Entry) Duration() time.Duration { return time.Duration(e.End - e.Start) }

// IsTest says the run was `iptables-restore --test` (parsed, not applied).
func (e Entry) IsTest() bool {
	for _, a := range e.Args {
		if a == "--test" || a == "-t" {
			return true
		}
	}
	return false
}
