package sync

import (
	"fmt"
	"time"
)

// Backoff is a capped exponential backoff: Initial, Initial*Factor, ...,
// never more than Max. It has no jitter: there is one sync loop per node,
// so there is no herd to spread. Not safe for concurrent use (the runner
// only touches it from its own goroutine).
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	// Factor defaults to 2 when 0.
	Factor float64

	next time.Duration
}

func (b *Backoff) validate() error {
	if b.Initial <= 0 {
		return fmt.Errorf("backoff Initial %v must be positive", b.Initial)
	}
	if b.Max < b.Initial {
		return fmt.Errorf("backoff Max %v is less than Initial %v", b.Max, b.Initial)
	}
	if b.Factor != 0 && b.Factor < 1 {
		return fmt.Errorf("backoff Factor %v must be >= 1", b.Factor)
	}
	return nil
}

// Next returns the current delay and advances to the following one.
func (b *Backoff) Next() time.Duration {
	if b.next == 0 {
		b.next = b.Initial
	}
	d := b.next
	f := b.Factor
	if f == 0 {
		f = 2
	}
	// Multiply in float64 and clamp before converting back, so a large
	// factor cannot overflow time.Duration.
	n := float64(b.next) * f
	if n >= float64(b.Max) {
		b.next = b.Max
	} else {
		b.next = time.Duration(n)
	}
	if d > b.Max {
		d = b.Max
	}
	return d
}

// Reset starts the sequence again at Initial.
func (b *Backoff) Reset() { b.next = 0 }
