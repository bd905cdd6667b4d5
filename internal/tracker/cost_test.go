package tracker

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/metrics"
	"github.com/omicsq/omicsq/sandbox"
)

// submitMany creates n singleton run groups in the sandbox, 16 at a time.
func submitMany(ctx context.Context, e *env, n int) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				e.submit(ctx, i, 0, "")
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// describeArrivals is the sandbox's count of DescribeRunGroups calls.
func describeArrivals(e *env) int64 { return e.sb.Stats().Actions["DescribeRunGroups"].Arrivals }

// (c) N active run groups cost ceil(N/100) DescribeRunGroups calls per
// cycle, counted at the sandbox, and the tracker stays within its share of
// the rate: at most share*rate calls in any second, plus the one a token
// bucket starts with.
func TestCycleCostsOneCallPerHundredGroups(t *testing.T) {
	ctx := context.Background()
	const n = 1050
	e := newEnv(t, sandbox.Execution{}) // groups stay Pending: every cycle polls all of them
	submitMany(ctx, e, n)
	e.publishResults(ctx)
	const rate, share = 40, 0.25
	r := e.startTracker(trackerOpts{rate: rate, share: share, interval: 2 * time.Second})
	waitFor(t, "every group to be followed and announced", 30*time.Second, func() bool {
		s := r.Stats()
		return s.Active == n && s.Cycles >= 1 && s.Last.Groups == n
	})

	// Sample the sandbox between cycles (a cycle of 11 calls at 10/s takes
	// about a second; the interval leaves another idle).
	var samples []int64
	for cycles := r.Stats().Cycles; len(samples) < 3; {
		waitFor(t, "the next cycle", 10*time.Second, func() bool { return r.Stats().Cycles > cycles })
		samples = append(samples, describeArrivals(e))
		cycles = r.Stats().Cycles
	}
	want := int64(math.Ceil(n / 100.0))
	for i := 1; i < len(samples); i++ {
		if got := samples[i] - samples[i-1]; got != want {
			t.Errorf("cycle %d made %d DescribeRunGroups calls at the sandbox, want ceil(%d/100) = %d", i, got, n, want)
		}
	}
	last := r.Stats().Last
	if last.DescribeRunGroups != int(want) || last.DescribeRuns != 0 || last.Seen != n || last.Events != 0 {
		t.Errorf("last cycle %+v; want %d DescribeRunGroups calls, none else, %d seen", last, want, n)
	}
	if got := metricValue(t, r, "omicsq_tracker_cycle_describe_calls", "action", "DescribeRunGroups"); got != float64(want) {
		t.Errorf("omicsq_tracker_cycle_describe_calls = %v, want %d", got, want)
	}
	if maxPerSecond := e.sb.Stats().Actions["DescribeRunGroups"].MaxArrivals1s; maxPerSecond > int(rate*share)+1 {
		t.Errorf("the tracker made %d calls in one second; its share is %v/s", maxPerSecond, rate*share)
	}
	if lag := metricValue(t, r, "omicsq_tracker_lag_seconds"); lag <= 0 || lag > 10 {
		t.Errorf("lag %v s with cycles of %v", lag, last.Duration)
	}
	t.Logf("%d groups: %d DescribeRunGroups calls per cycle, cycle %v, at most %d calls/s at the sandbox",
		n, last.DescribeRunGroups, last.Duration.Round(time.Millisecond), e.sb.Stats().Actions["DescribeRunGroups"].MaxArrivals1s)
}

// benchCycle runs cycles over n Pending run groups recorded directly in the
// runs bucket (as if announced already, so a cycle publishes nothing), and
// reports the calls per cycle.
func benchCycle(b *testing.B, n int, rate float64) {
	ctx := context.Background()
	e := newEnv(b, sandbox.Execution{})
	submitMany(ctx, e, n)
	m, err := metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{})
	if err != nil {
		b.Fatal(err)
	}
	tr, err := New(Config{JS: e.js, Topology: e.topo, API: e.api, Rate: rate, Share: DefaultShare, Metrics: m})
	if err != nil {
		b.Fatal(err)
	}
	if err := tr.bind(ctx); err != nil {
		b.Fatal(err)
	}
	st := newState()
	now := time.Now()
	for _, key := range e.keys {
		en := Entry{Key: key, RunGroupID: e.groupOf[key], SubmittedAt: now, RecordedAt: now, Status: "Pending",
			Counts: []client.StatusCount{{Status: "Pending", Count: 1}}, TotalRun: 1, Group: Emitted{Statuses: []string{"pending"}}}
		v, _ := json.Marshal(en)
		rev, err := tr.runs.Put(ctx, client.KeyToken(key), v)
		if err != nil {
			b.Fatal(err)
		}
		st.upsert(client.KeyToken(key), en, rev, now, now)
	}
	before := e.sb.Stats().Actions["DescribeRunGroups"]
	b.ResetTimer()
	var calls int
	for range b.N {
		cs := tr.cycle(ctx, st)
		if cs.Seen != n || cs.Errors != 0 {
			b.Fatalf("cycle %+v", cs)
		}
		calls += cs.DescribeRunGroups + cs.DescribeRuns
	}
	b.StopTimer()
	after := e.sb.Stats().Actions["DescribeRunGroups"]
	b.ReportMetric(float64(calls)/float64(b.N), "calls/cycle")
	b.ReportMetric(float64(after.Arrivals-before.Arrivals)/float64(b.N), "sandbox-calls/cycle")
	b.ReportMetric(float64(after.MaxArrivals1s), "max-calls/s")
}

// BenchmarkCycle10k: 10,000 active groups, no rate limit: the cost of a
// cycle itself, and its 100 calls.
func BenchmarkCycle10k(b *testing.B) { benchCycle(b, 10_000, 0) }

// BenchmarkCycle10kShared: the same at the API's 20 calls/s with the
// default 25% share: 100 calls at 5/s, about 20 s per cycle, never more
// than 6 calls in a second. Run with -benchtime=1x.
func BenchmarkCycle10kShared(b *testing.B) { benchCycle(b, 10_000, 20) }
