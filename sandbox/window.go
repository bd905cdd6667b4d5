package sandbox

import (
	"sort"
	"time"
)

// slidingWindow counts events in the half-open interval (t-span, t] ending
// at the latest event. Timestamps are offsets from the server's epoch and
// must be pushed in non-decreasing order. Each event is pushed and evicted
// once, so push and count cost O(1) amortised.
type slidingWindow struct {
	span time.Duration
	ring []time.Duration // events, oldest at head
	head int
	n    int
}

func newSlidingWindow(span time.Duration) slidingWindow {
	return slidingWindow{span: span, ring: make([]time.Duration, 32)}
}

// countAt evicts events older than the window ending at t and returns how
// many remain.
func (w *slidingWindow) countAt(t time.Duration) int {
	for w.n > 0 && w.ring[w.head] <= t-w.span {
		w.head = (w.head + 1) % len(w.ring)
		w.n--
	}
	return w.n
}

// push records an event at t and returns the number of events in the
// window ending at t, this one included.
func (w *slidingWindow) push(t time.Duration) int {
	w.countAt(t)
	if w.n == len(w.ring) {
		grown := make([]time.Duration, 2*len(w.ring))
		for i := range w.n {
			grown[i] = w.ring[(w.head+i)%len(w.ring)]
		}
		w.ring, w.head = grown, 0
	}
	w.ring[(w.head+w.n)%len(w.ring)] = t
	w.n++
	return w.n
}

// SecondStats are the calls of one action that arrived in one wall-clock
// second of the server's clock.
type SecondStats struct {
	// Unix is the second, in seconds since the Unix epoch.
	Unix int64 `json:"unix"`
	// Arrivals counts every call of the action in that second.
	Arrivals int64 `json:"arrivals"`
	// Admitted counts the calls the rate limiter let through.
	Admitted int64 `json:"admitted"`
	// Throttled counts the calls the rate limiter refused.
	Throttled int64 `json:"throttled"`
}

// maxHistogramSeconds bounds the per-second histogram of one action; older
// seconds are dropped. A day covers any benchmark.
const maxHistogramSeconds = 24 * 60 * 60

// secondHistogram holds SecondStats ordered by second. Time mostly moves
// forward, so the usual case touches the last bucket.
type secondHistogram struct {
	buckets []SecondStats
}

// at returns the bucket of second unix, creating it if needed.
func (h *secondHistogram) at(unix int64) *SecondStats {
	if n := len(h.buckets); n > 0 && h.buckets[n-1].Unix == unix {
		return &h.buckets[n-1]
	}
	if n := len(h.buckets); n == 0 || h.buckets[n-1].Unix < unix {
		// Trim in batches so dropping old seconds stays amortised O(1).
		if n >= maxHistogramSeconds+maxHistogramSeconds/8 {
			h.buckets = append(h.buckets[:0], h.buckets[n-maxHistogramSeconds:]...)
		}
		h.buckets = append(h.buckets, SecondStats{Unix: unix})
		return &h.buckets[len(h.buckets)-1]
	}
	// An injected clock went back: insert in order.
	i := sort.Search(len(h.buckets), func(i int) bool { return h.buckets[i].Unix >= unix })
	if h.buckets[i].Unix != unix {
		h.buckets = append(h.buckets, SecondStats{})
		copy(h.buckets[i+1:], h.buckets[i:])
		h.buckets[i] = SecondStats{Unix: unix}
	}
	return &h.buckets[i]
}
