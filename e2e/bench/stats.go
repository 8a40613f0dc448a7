package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Quantile returns the q-quantile (0..1) of xs by linear interpolation
// between closest ranks; NaN for no samples. xs is not modified.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if q <= 0 {
		return s[0]
	}
	if q >= 1 {
		return s[len(s)-1]
	}
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	frac := pos - float64(lo)
	return s[lo] + (s[hi]-s[lo])*frac
}

// Mean of xs (NaN for none).
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// LatencyStats summarises TCP connect times, in microseconds.
type LatencyStats struct {
	Count    int     `json:"count"`
	Failed   int     `json:"failed"`
	MedianUs float64 `json:"median_us"`
	P90Us    float64 `json:"p90_us"`
	P99Us    float64 `json:"p99_us"`
	MeanUs   float64 `json:"mean_us"`
	MinUs    float64 `json:"min_us"`
}

// SummarizeLatencies turns connect durations into LatencyStats.
func SummarizeLatencies(ds []time.Duration, failed int) LatencyStats {
	us := make([]float64, len(ds))
	for i, d := range ds {
		us[i] = float64(d.Nanoseconds()) / 1e3
	}
	return LatencyStats{
		Count:    len(ds),
		Failed:   failed,
		MedianUs: nanToZero(Quantile(us, 0.5)),
		P90Us:    nanToZero(Quantile(us, 0.9)),
		P99Us:    nanToZero(Quantile(us, 0.99)),
		MeanUs:   nanToZero(Mean(us)),
		MinUs:    nanToZero(Quantile(us, 0)),
	}
}

func nanToZero(x float64) float64 {
	if math.IsNaN(x) {
		return 0
	}
	return x
}

// Ratio is ours/theirs, or NaN when either is missing (zero or NaN).
func Ratio(ours, theirs float64) float64 {
	if ours <= 0 || theirs <= 0 || math.IsNaN(ours) || math.IsNaN(theirs) {
		return math.NaN()
	}
	return ours / theirs
}

// humanBytes formats a byte count (1.5 MB, 2.9 KB, 312 B); decimal units,
// as the README's tables use.
func humanBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
