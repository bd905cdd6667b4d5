package ratelimit

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"
)

// This file simulates, in virtual time, a fleet that uses the pure algorithm
// against a sandbox API that admits at most 20 calls in any sliding second
// (counted at arrival) and throttles the rest, optionally shared with an
// outside client. It checks the acceptance targets that depend on the
// algorithm alone (no NATS, no sleeping).

type simConfig struct {
	cfg          Config
	waiters      int           // concurrent callers in the fleet
	rtt          time.Duration // grant -> response
	netJitter    time.Duration // arrival = slot + uniform[0, netJitter)
	outsideEvery time.Duration // 0: no outside client
	outsideJit   time.Duration // outside arrival jitter, uniform [0, outsideJit)
	outsideUntil time.Duration // 0: the outside client never stops
	duration     time.Duration
	warmup       time.Duration // excluded from the reported numbers
	seed         uint64
}

type simResult struct {
	fleetCalls, fleetThrottled     int
	outsideCalls, outsideThrottled int
	fleetRate                      float64 // admitted fleet calls per second after warmup
	perSecond                      []int   // admitted fleet calls in each second of the run
	maxWindow                      int     // most admitted calls in any sliding second
	decreases                      int
}

type simEvent struct {
	at     int64
	kind   int // 0 waiter attempts a reservation, 1 fleet arrival, 2 fleet response, 3 outside arrival
	waiter int
	thr    bool
}

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].kind < q[j].kind
}
func (q simQueue) Swap(i, j int)   { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)     { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() (x any)   { x, *q = (*q)[len(*q)-1], (*q)[:len(*q)-1]; return x }
func (q *simQueue) add(e simEvent) { heap.Push(q, e) }

func simulate(sc simConfig) simResult {
	p := sc.cfg.withDefaults().params()
	rng := rand.New(rand.NewPCG(sc.seed, 1))
	const start = int64(1_000_000_000_000)
	end := start + int64(sc.duration)
	warmEnd := start + int64(sc.warmup)
	window := int64(time.Second)

	st := state{} // as if the key existed, empty
	var q simQueue
	for w := range sc.waiters {
		q.add(simEvent{at: start, kind: 0, waiter: w})
	}
	if sc.outsideEvery > 0 {
		q.add(simEvent{at: start + 37*int64(time.Millisecond), kind: 3})
	}
	var admitted []int64 // admitted arrival times, ascending
	res := simResult{perSecond: make([]int, sc.duration/time.Second+1)}
	admit := func(at int64) bool {
		lo := 0
		for lo < len(admitted) && admitted[lo] <= at-window {
			lo++
		}
		if len(admitted)-lo >= 20 {
			return false
		}
		admitted = append(admitted, at)
		if n := len(admitted) - lo; n > res.maxWindow {
			res.maxWindow = n
		}
		return true
	}
	jitter := func(d time.Duration) int64 {
		if d <= 0 {
			return 0
		}
		return rng.Int64N(int64(d))
	}
	fleetAdmitted := 0
	for q.Len() > 0 {
		e := heap.Pop(&q).(simEvent)
		if e.at > end {
			break
		}
		switch e.kind {
		case 0:
			r := st.reserve(e.at, e.at, p)
			if !r.ok {
				q.add(simEvent{at: r.slot - p.horizon, kind: 0, waiter: e.waiter})
				continue
			}
			q.add(simEvent{at: r.slot + jitter(sc.netJitter), kind: 1, waiter: e.waiter})
		case 1:
			ok := admit(e.at)
			if ok {
				res.perSecond[(e.at-start)/window]++
			}
			if e.at >= warmEnd {
				res.fleetCalls++
				if ok {
					fleetAdmitted++
				} else {
					res.fleetThrottled++
				}
			}
			q.add(simEvent{at: e.at + int64(sc.rtt), kind: 2, waiter: e.waiter, thr: !ok})
		case 2:
			if e.thr {
				if changed, _, _ := st.throttle(e.at, p); changed {
					res.decreases++
				}
			}
			q.add(simEvent{at: e.at, kind: 0, waiter: e.waiter})
		case 3:
			ok := admit(e.at)
			if e.at >= warmEnd {
				res.outsideCalls++
				if !ok {
					res.outsideThrottled++
				}
			}
			if next := e.at + int64(sc.outsideEvery) + jitter(sc.outsideJit); sc.outsideUntil == 0 || next < start+int64(sc.outsideUntil) {
				q.add(simEvent{at: next, kind: 3})
			}
		}
	}
	res.fleetRate = float64(fleetAdmitted) / (sc.duration - sc.warmup).Seconds()
	return res
}

func (r simResult) throttledShare() float64 {
	if r.fleetCalls == 0 {
		return 0
	}
	return float64(r.fleetThrottled) / float64(r.fleetCalls)
}

// With the whole quota to itself the fleet paces at Limit/(Window+Guard) and
// is never throttled, whatever the number of callers (given enough of them to
// keep the pipeline full).
func TestSimulateFullRateNeverThrottled(t *testing.T) {
	for _, tc := range []struct {
		waiters int
		minRate float64
	}{
		{1, 0.95 / (51*time.Millisecond + 30*time.Millisecond).Seconds()}, // one caller: grant, then its response, then the next grant
		{3, 19.5},
		{24, 19.5},
	} {
		r := simulate(simConfig{
			waiters: tc.waiters, rtt: 30 * time.Millisecond, netJitter: 10 * time.Millisecond,
			duration: 60 * time.Second, warmup: 2 * time.Second, seed: 1,
		})
		if r.fleetThrottled != 0 || r.maxWindow > 20 || r.fleetRate < tc.minRate || r.decreases != 0 {
			t.Errorf("waiters=%d: throttled=%d maxWindow=%d rate=%.2f decreases=%d; want 0, <=20, >=%.2f, 0",
				tc.waiters, r.fleetThrottled, r.maxWindow, r.fleetRate, r.decreases, tc.minRate)
		}
	}
}

// An outside client takes 10/s of the quota: after a 10 s warm-up (in which
// the fleet starts at 20/s and must cut its rate several times) the fleet runs
// near the remaining 10/s with at most 2% of its calls throttled.
func TestSimulateOutsideClient(t *testing.T) {
	for _, tc := range []struct {
		name     string
		every    time.Duration // outside period = every + uniform[0, jitter): mean 100ms
		jitter   time.Duration
		rtt      time.Duration
		duration time.Duration
		minRate  float64
	}{
		{"even/60s", 100 * time.Millisecond, 0, 30 * time.Millisecond, 60 * time.Second, 8.5},
		{"even/300s", 100 * time.Millisecond, 0, 30 * time.Millisecond, 300 * time.Second, 8.5},
		{"jittered/60s", 90 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond, 60 * time.Second, 8.3},
		{"slow responses/60s", 100 * time.Millisecond, 0, 200 * time.Millisecond, 60 * time.Second, 8.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 3; seed++ {
				r := simulate(simConfig{
					waiters: 12, rtt: tc.rtt, netJitter: 5 * time.Millisecond,
					outsideEvery: tc.every, outsideJit: tc.jitter,
					duration: tc.duration, warmup: 10 * time.Second, seed: seed,
				})
				t.Logf("seed %d: fleet %.2f/s, throttled %.2f%% (%d/%d), outside throttled %d/%d, decreases %d",
					seed, r.fleetRate, 100*r.throttledShare(), r.fleetThrottled, r.fleetCalls,
					r.outsideThrottled, r.outsideCalls, r.decreases)
				if r.throttledShare() > 0.02 || r.fleetRate < tc.minRate || r.fleetRate > 10.2 || r.maxWindow > 20 {
					t.Errorf("seed %d: fleet %.2f/s, throttled %.2f%%; want rate in [%.1f, 10.2], throttled <= 2%%",
						seed, r.fleetRate, 100*r.throttledShare(), tc.minRate)
				}
			}
		})
	}
}

// When the outside client stops, the fleet climbs back to the full rate
// (cubic recovery: back at the last peak after Recovery, then faster).
func TestSimulateRecoveryAfterPressure(t *testing.T) {
	r := simulate(simConfig{
		waiters: 12, rtt: 30 * time.Millisecond, netJitter: 5 * time.Millisecond,
		outsideEvery: 100 * time.Millisecond, outsideUntil: 60 * time.Second,
		duration: 130 * time.Second, warmup: 10 * time.Second, seed: 1,
	})
	full := -1 // first second (after the outside client stops) at >= 19 calls
	for sec := 60; sec < len(r.perSecond); sec++ {
		if r.perSecond[sec] >= 19 {
			full = sec - 60
			break
		}
	}
	t.Logf("calls per second from 55s: %v; full rate %ds after the outside client stopped", r.perSecond[55:], full)
	if full < 0 || full > 50 {
		t.Fatalf("full rate reached %ds after the pressure ended, want within 50s", full)
	}
	for sec := 60 + full; sec < len(r.perSecond)-1; sec++ {
		if r.perSecond[sec] < 19 {
			t.Fatalf("second %d: %d calls after reaching the full rate", sec, r.perSecond[sec])
		}
	}
}
