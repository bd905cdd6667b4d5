package ratelimit

import (
	"context"
	"testing"
	"time"
)

// benchConfig allows far more grants than a KV round trip can make, so that
// the benchmarks measure the cost of a grant, not the pacing.
var benchConfig = Config{
	Limit:   200,
	Window:  time.Millisecond,
	Guard:   20 * time.Millisecond, // 200 per 21ms: about 9,500/s
	Horizon: time.Second,
}

// One grant: a compare-and-set on the KV key plus the short lead before the
// slot (about two write latencies, see Global.lead).
func BenchmarkGlobalWait(b *testing.B) {
	s := startServer(b, -1, b.TempDir())
	g := newGlobal(b, connect(b, s), Key("bench", "region", "RunApplication"), benchConfig)
	ctx := context.Background()
	if _, err := g.Wait(ctx); err != nil { // pay the cold start outside the timing
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	st := g.Stats()
	b.ReportMetric(float64(st.Conflicts)/float64(b.N), "conflicts/op")
	b.ReportMetric(float64(st.Late)/float64(b.N), "late/op")
	g.mu.Lock()
	b.ReportMetric(float64(g.latency.Microseconds()), "µs/write")
	g.mu.Unlock()
}

// Four replicas contending for one key, four callers each.
func BenchmarkGlobalWaitContended(b *testing.B) {
	s := startServer(b, -1, b.TempDir())
	key := Key("bench", "region", "RunApplication")
	fleet := make([]*Global, 4)
	for i := range fleet {
		fleet[i] = newGlobal(b, connect(b, s), key, benchConfig)
	}
	ctx := context.Background()
	if _, err := fleet[0].Wait(ctx); err != nil {
		b.Fatal(err)
	}
	next := make(chan int, 16)
	for i := range 16 {
		next <- i % 4
	}
	b.SetParallelism(4) // 4 x GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		g := fleet[<-next%len(fleet)]
		for pb.Next() {
			if _, err := g.Wait(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	var conflicts uint64
	for _, g := range fleet {
		conflicts += g.Stats().Conflicts
	}
	b.ReportMetric(float64(conflicts)/float64(b.N), "conflicts/op")
}

// The pure algorithm: one reservation on a full default log, plus encoding.
func BenchmarkReserve(b *testing.B) {
	p := Config{}.withDefaults().params()
	st := coldState(t0, p)
	now := t0
	for b.Loop() {
		r := st.reserve(now, now, p)
		if !r.ok {
			now = r.slot - p.horizon
			continue
		}
		_ = st.encode(p)
	}
}
