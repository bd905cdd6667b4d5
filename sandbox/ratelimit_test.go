package sandbox

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// TestRateLimit: with a frozen clock the 21st call within a second is
// throttled; throttled calls do not count toward the window; the window
// slides; Rate 0 lifts the limit.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Now())
	s, l := startSandbox(t, Options{Rate: DefaultRate, Now: clock.Now})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	ctx := t.Context()
	n := 0
	call := func() error {
		n++
		_, err := c.RunApplication(ctx, runRequest(fmt.Sprintf("rl-%d", n)))
		return err
	}
	wantThrottled := func(t *testing.T, err error) {
		t.Helper()
		e, ok := err.(*submit.Error)
		if !ok || e.Code != codeRequestLimitExceeded || e.Class != submit.ClassThrottled {
			t.Fatalf("err = %v, want RequestLimitExceeded (throttled)", err)
		}
	}

	for i := range DefaultRate {
		if err := call(); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	wantThrottled(t, call()) // the 21st at the same instant

	clock.Advance(500 * time.Millisecond)
	for range 5 {
		wantThrottled(t, call()) // still 20 admitted in (t0-0.5s, t0+0.5s]
	}
	clock.Advance(499 * time.Millisecond)
	wantThrottled(t, call()) // t0+999ms: the window still holds t0

	// At t0+1s the first 20 leave the window. Had the throttled calls at
	// t0+0.5s counted, some of these would be refused.
	clock.Advance(time.Millisecond)
	for i := range DefaultRate {
		if err := call(); err != nil {
			t.Fatalf("after the window slid, call %d: %v", i+1, err)
		}
	}
	wantThrottled(t, call())

	st := s.Stats().Actions[actionRunApplication]
	if st.Admitted != 40 || st.Throttled != 8 || st.Arrivals != 48 {
		t.Errorf("admitted %d, throttled %d, arrivals %d; want 40, 8, 48", st.Admitted, st.Throttled, st.Arrivals)
	}
	if st.MaxAdmitted1s != DefaultRate {
		t.Errorf("MaxAdmitted1s = %d, want %d", st.MaxAdmitted1s, DefaultRate)
	}
	// (t0, t0+1s] holds the 6 throttled calls after t0 and the 21 at t0+1s.
	if st.MaxArrivals1s != 27 {
		t.Errorf("MaxArrivals1s = %d, want 27", st.MaxArrivals1s)
	}
	if st.Calls[outcomeThrottled] != 8 || st.Calls[outcomeSuccess] != 40 {
		t.Errorf("calls = %v", st.Calls)
	}
	var perSecond SecondStats
	for _, b := range st.PerSecond {
		perSecond.Arrivals += b.Arrivals
		perSecond.Admitted += b.Admitted
		perSecond.Throttled += b.Throttled
	}
	if perSecond.Arrivals != 48 || perSecond.Admitted != 40 || perSecond.Throttled != 8 {
		t.Errorf("per-second histogram sums to %+v, want 48/40/8", perSecond)
	}

	// DescribeRunGroups has its own window.
	if _, err := c.DescribeRunGroups(ctx, nil); err != nil {
		t.Errorf("DescribeRunGroups while RunApplication is throttled: %v", err)
	}
}

func TestNoRateLimit(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Now())
	s, l := startSandbox(t, Options{Rate: 0, Now: clock.Now})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	for i := range 3 * DefaultRate {
		if _, err := c.DescribeRunGroups(t.Context(), nil); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	if got := s.Stats().Actions[actionDescribeRunGroups].MaxAdmitted1s; got != 3*DefaultRate {
		t.Errorf("MaxAdmitted1s = %d, want %d", got, 3*DefaultRate)
	}
}

// TestSlidingWindowMatchesBruteForce compares the incremental window with
// a direct count over random non-decreasing timestamps.
func TestSlidingWindowMatchesBruteForce(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	w := newSlidingWindow(time.Second)
	var all []time.Duration
	var now time.Duration
	for i := range 5000 {
		// Bursts and gaps: mostly sub-millisecond steps, sometimes seconds.
		switch r := rng.IntN(100); {
		case r < 90:
			now += time.Duration(rng.IntN(2_000_000))
		case r < 99:
			now += time.Duration(rng.IntN(300)) * time.Millisecond
		default:
			now += time.Duration(rng.IntN(3000)) * time.Millisecond
		}
		all = append(all, now)
		got := w.push(now)
		want := 0
		for _, ts := range all {
			if ts > now-time.Second {
				want++
			}
		}
		if got != want {
			t.Fatalf("event %d at %v: window count %d, want %d", i, now, got, want)
		}
	}
}

// TestLimiterNeverExceedsRate drives the limiter directly with random
// arrival times and checks, by brute force, that no 1-second window ever
// holds more than Rate admitted calls, and that a call is refused only
// when the window is full.
func TestLimiterNeverExceedsRate(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Unix(1_700_000_000, 0))
	s, err := New(Options{Rate: 7, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	st := s.actions[actionRunApplication]
	rng := rand.New(rand.NewPCG(3, 4))
	var admitted []time.Time
	for range 3000 {
		clock.Advance(time.Duration(rng.IntN(300)) * time.Millisecond)
		now := clock.Now()
		inWindow := 0
		for _, a := range admitted {
			if a.After(now.Add(-time.Second)) {
				inWindow++
			}
		}
		s.mu.Lock()
		ok := s.admit(st)
		s.mu.Unlock()
		if ok != (inWindow < 7) {
			t.Fatalf("at %v with %d admitted in the window: admit = %v", now, inWindow, ok)
		}
		if ok {
			admitted = append(admitted, now)
		}
	}
	if st.maxAdmitted != 7 {
		t.Errorf("maxAdmitted = %d, want 7", st.maxAdmitted)
	}
}

func TestSecondHistogramOrder(t *testing.T) {
	t.Parallel()
	var h secondHistogram
	for _, sec := range []int64{10, 10, 12, 11, 9, 12, 13} {
		h.at(sec).Arrivals++
	}
	var got []SecondStats
	got = append(got, h.buckets...)
	want := []SecondStats{{Unix: 9, Arrivals: 1}, {Unix: 10, Arrivals: 2}, {Unix: 11, Arrivals: 1}, {Unix: 12, Arrivals: 2}, {Unix: 13, Arrivals: 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("buckets = %v, want %v", got, want)
	}
}

// TestRateLimitConcurrent: concurrent clients on the real clock never get
// more than Rate calls admitted in any sliding second.
func TestRateLimitConcurrent(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Rate: DefaultRate})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				_, err := c.RunApplication(t.Context(), runRequest(fmt.Sprintf("c-%d-%d", g, i)))
				if err != nil && submit.ClassOf(err) != submit.ClassThrottled {
					t.Errorf("call: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := s.Stats().Actions[actionRunApplication]
	if st.MaxAdmitted1s > DefaultRate || st.Admitted < DefaultRate || st.Admitted+st.Throttled != 400 {
		t.Errorf("max admitted %d, admitted %d, throttled %d; want max <= %d, admitted >= %d, sum 400",
			st.MaxAdmitted1s, st.Admitted, st.Throttled, DefaultRate, DefaultRate)
	}
	if got := s.Stats().RunGroupsCreated; int64(got) != st.Admitted {
		t.Errorf("created %d groups, admitted %d calls", got, st.Admitted)
	}
}
