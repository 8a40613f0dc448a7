package sync

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i, w := range want {
		if got := b.Next(); got != w*time.Second {
			t.Fatalf("step %d: got %v, want %v", i, got, w*time.Second)
		}
	}
	b.Reset()
	if got := b.Next(); got != time.Second {
		t.Fatalf("after Reset: got %v, want 1s", got)
	}
}

func TestBackoffFactorAndOverflow(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: time.Duration(1<<62 - 1), Factor: 1e9}
	for i := range 10 {
		if got := b.Next(); got <= 0 || got > b.Max {
			t.Fatalf("step %d: got %v", i, got)
		}
	}
	c := Backoff{Initial: 3 * time.Second, Max: 30 * time.Second, Factor: 3}
	for i, w := range []time.Duration{3, 9, 27, 30} {
		if got := c.Next(); got != w*time.Second {
			t.Fatalf("factor 3 step %d: got %v, want %v", i, got, w*time.Second)
		}
	}
}
