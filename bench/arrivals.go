package main

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// The sandbox's statistics give exact-timestamp sliding maxima over a whole
// run (MaxArrivals1s) and per-second buckets on wall-clock seconds. The
// benchmarks also need sliding maxima over the steady state only, and
// buckets aligned to events (a kill, the start of an outside client), so
// they keep a raw arrival log. It comes from the sandbox's documented
// per-call debug record ("omics call": action, outcome, duration), whose
// arrival time is the record's time minus the call's duration (the sandbox
// starts that duration when the request reaches its handler, microseconds
// before it takes the arrival's timestamp). The harness checks the log
// against the sandbox's own counters and maximum after every run.

// arrival is one API call as the sandbox saw it.
type arrival struct {
	At        time.Time
	Action    string
	Outcome   string
	RequestID string
}

// Admitted reports whether the sandbox's rate limiter let the call through.
// The benchmarks send only valid, signed calls, so every outcome but the
// limiter's "throttled" is past the limiter; the harness checks the totals
// against the sandbox's own Admitted and Throttled counters after each run,
// and reports any outcome other than "success" and "throttled".
func (a arrival) Admitted() bool { return a.Outcome != "throttled" }

// Throttled reports a refusal by the sandbox's rate limiter.
func (a arrival) Throttled() bool { return a.Outcome == "throttled" }

// recorder is a slog.Handler that keeps the sandbox's per-call records.
type recorder struct {
	mu       sync.Mutex
	arrivals []arrival
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }

func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Message != "omics call" {
		return nil
	}
	// Behind a tap (tap.go), the sandbox logs with the request's context,
	// which carries the tap's record of the call: it gets the outcome.
	tc := tapCallFrom(ctx)
	a := arrival{At: rec.Time}
	rec.Attrs(func(at slog.Attr) bool {
		switch at.Key {
		case "action":
			a.Action = at.Value.String()
		case "outcome":
			a.Outcome = at.Value.String()
			if tc != nil {
				tc.setOutcome(a.Outcome)
			}
		case "request_id":
			a.RequestID = at.Value.String()
		case "duration":
			a.At = rec.Time.Add(-at.Value.Duration())
		}
		return true
	})
	r.mu.Lock()
	r.arrivals = append(r.arrivals, a)
	r.mu.Unlock()
	return nil
}

// snapshot returns the calls of action, in arrival order.
func (r *recorder) snapshot(action string) []arrival {
	r.mu.Lock()
	out := make([]arrival, 0, len(r.arrivals))
	for _, a := range r.arrivals {
		if a.Action == action {
			out = append(out, a)
		}
	}
	r.mu.Unlock()
	// Records are appended when calls finish: sort by arrival.
	slices.SortStableFunc(out, func(x, y arrival) int { return x.At.Compare(y.At) })
	return out
}

// window is a half-open time interval [From, To).
type window struct{ From, To time.Time }

func (w window) contains(t time.Time) bool { return !t.Before(w.From) && t.Before(w.To) }
func (w window) seconds() float64          { return w.To.Sub(w.From).Seconds() }

// tally counts the calls in a window.
type tally struct {
	Arrivals, Admitted, Throttled int
	Seconds                       float64
}

func (t tally) Rate() float64 {
	if t.Seconds <= 0 {
		return 0
	}
	return float64(t.Admitted) / t.Seconds
}

// ThrottledPct is the share of the calls that the limiter refused.
func (t tally) ThrottledPct() float64 {
	if t.Arrivals == 0 {
		return 0
	}
	return 100 * float64(t.Throttled) / float64(t.Arrivals)
}

func count(as []arrival, w window) tally {
	t := tally{Seconds: w.seconds()}
	for _, a := range as {
		if !w.contains(a.At) {
			continue
		}
		t.Arrivals++
		if a.Admitted() {
			t.Admitted++
		}
		if a.Throttled() {
			t.Throttled++
		}
	}
	return t
}

// maxSliding returns the most events selected by keep whose times lie in one
// half-open 1-second interval (t-1s, t], over events inside w (the sandbox's
// definition of MaxArrivals1s, restricted to w).
func maxSliding(as []arrival, w window, keep func(arrival) bool) int {
	var ts []time.Time
	for _, a := range as {
		if w.contains(a.At) && keep(a) {
			ts = append(ts, a.At)
		}
	}
	best, lo := 0, 0
	for hi := range ts {
		for !ts[lo].After(ts[hi].Add(-time.Second)) {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

func all(arrival) bool { return true }

// perSecond buckets the admitted calls (and throttled ones) into 1-second
// buckets starting at origin, covering w.
func perSecond(as []arrival, origin time.Time, w window) (admitted, throttled []int, first int) {
	first = int(floorDiv(w.From.Sub(origin), time.Second))
	last := int(floorDiv(w.To.Sub(origin)-1, time.Second))
	if last < first {
		return nil, nil, first
	}
	admitted = make([]int, last-first+1)
	throttled = make([]int, last-first+1)
	for _, a := range as {
		if !w.contains(a.At) {
			continue
		}
		i := int(floorDiv(a.At.Sub(origin), time.Second)) - first
		if i < 0 || i >= len(admitted) {
			continue
		}
		if a.Admitted() {
			admitted[i]++
		}
		if a.Throttled() {
			throttled[i]++
		}
	}
	return admitted, throttled, first
}

func floorDiv(d, unit time.Duration) time.Duration {
	q := d / unit
	if d%unit < 0 {
		q--
	}
	return q
}

// minMax returns the smallest and largest element of xs.
func minMax(xs []int) (lo, hi int) {
	if len(xs) == 0 {
		return 0, 0
	}
	lo, hi = xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// gaps returns the smallest, 1st-percentile and median time between
// consecutive admitted calls in w.
func gaps(as []arrival, w window) (lo, p1, median time.Duration) {
	var prev time.Time
	var ds []time.Duration
	for _, a := range as {
		if !w.contains(a.At) || !a.Admitted() {
			continue
		}
		if !prev.IsZero() {
			ds = append(ds, a.At.Sub(prev))
		}
		prev = a.At
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[0], ds[len(ds)/100], ds[len(ds)/2]
}
