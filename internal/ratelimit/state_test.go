package ratelimit

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

const t0 = int64(1_700_000_000_000_000_000) // an arbitrary wall-clock instant, unix ns

func ms(n float64) int64 { return int64(n * float64(time.Millisecond)) }

func testParams(t *testing.T, c Config) params {
	t.Helper()
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	return c.params()
}

// drain reserves n grants as a greedy caller would: each attempt at the
// current time, and when refused, again at slot-horizon. It returns the slots.
func drain(t *testing.T, st *state, p params, now int64, n int) []int64 {
	t.Helper()
	var slots []int64
	for len(slots) < n {
		r := st.reserve(now, now, p)
		if !r.ok {
			if r.slot-p.horizon <= now {
				t.Fatalf("refused at %d with slot %d inside the horizon", now-t0, r.slot-t0)
			}
			now = r.slot - p.horizon
			continue
		}
		if r.slot < now || r.slot > now+p.horizon {
			t.Fatalf("granted slot %v outside [now, now+horizon] = [%v, %v]",
				time.Duration(r.slot-t0), time.Duration(now-t0), time.Duration(now+p.horizon-t0))
		}
		slots = append(slots, r.slot)
	}
	return slots
}

func TestReserveSchedule(t *testing.T) {
	pace := 1020.0 / 20 // ms: Limit per Window+Guard, evenly
	for _, tc := range []struct {
		name string
		cfg  Config
		n    int
		want func(i int) float64 // ms after t0 of the i-th grant
	}{
		{"default: evenly spaced at (window+guard)/limit", Config{}, 45,
			func(i int) float64 { return float64(i) * pace }},
		{"burst 5: groups of 5 every 5 paces", Config{Burst: 5}, 40,
			func(i int) float64 { return float64(i/5) * 5 * pace }},
		{"burst = limit: whole windows at once", Config{Burst: 20}, 60,
			func(i int) float64 { return float64(i/20) * 1020 }},
		{"larger guard slows the pace", Config{Guard: 100 * time.Millisecond}, 30,
			func(i int) float64 { return float64(i) * 1100 / 20 }},
		{"limit 3 per 100ms", Config{Limit: 3, Window: 100 * time.Millisecond, Guard: 5 * time.Millisecond, MinRate: 1}, 10,
			func(i int) float64 { return float64(i) * 35 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testParams(t, tc.cfg)
			var st state
			got := drain(t, &st, p, t0, tc.n)
			for i, g := range got {
				if want := t0 + ms(tc.want(i)); g < want || g > want+int64(time.Microsecond) {
					t.Fatalf("grant %d at %v, want %v", i, time.Duration(g-t0), time.Duration(want-t0))
				}
			}
		})
	}
}

// The bound the whole design rests on: whatever the settings and however
// callers, throttles and idle gaps interleave, no span (Window+Guard) holds
// more than Limit grants, and no grant is reserved beyond the horizon.
func TestWindowBoundProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := range 200 {
		limit := 1 + rng.IntN(30)
		cfg := Config{
			Limit:   limit,
			Window:  time.Duration(10+rng.IntN(2000)) * time.Millisecond,
			Guard:   time.Duration(2+rng.IntN(50)) * time.Millisecond,
			Burst:   1 + rng.IntN(limit),
			Horizon: time.Duration(1+rng.IntN(3000)) * time.Millisecond,
			MinRate: 0.5,
		}
		p := testParams(t, cfg)
		var st state
		var all []int64
		now := t0
		for range 300 {
			now += rng.Int64N(int64(cfg.Window) / int64(limit) * 2)
			if rng.IntN(10) == 0 {
				st.throttle(now, p)
			}
			r := st.reserve(now+rng.Int64N(ms(3)), now, p)
			if !r.ok {
				continue
			}
			if r.slot > now+p.horizon || r.slot < now {
				t.Fatalf("trial %d: slot %d outside [now, now+horizon]", trial, r.slot-now)
			}
			all = append(all, r.slot)
		}
		if !slices.IsSorted(all) {
			t.Fatalf("trial %d: grants out of order", trial)
		}
		for i := 0; i+limit < len(all); i++ {
			if d := all[i+limit] - all[i]; d < p.span {
				t.Fatalf("trial %d (%+v): grants %d and %d are %v apart, want >= %v",
					trial, cfg, i, i+limit, time.Duration(d), time.Duration(p.span))
			}
		}
	}
}

func TestReserveRefusesBeyondHorizon(t *testing.T) {
	p := testParams(t, Config{Horizon: 200 * time.Millisecond})
	var st state
	got := drain(t, &st, p, t0, 4) // 0, 51, 102, 153ms: all within 200ms of t0
	if got[3] != t0+ms(153) {
		t.Fatalf("4th grant at %v", time.Duration(got[3]-t0))
	}
	before := st.clone()
	r := st.reserve(t0, t0, p) // next would be at 204ms > t0+200ms
	if r.ok || r.slot != t0+ms(204) {
		t.Fatalf("reserve = %+v, want refused with slot 204ms", r)
	}
	if !slices.Equal(st.grants, before.grants) {
		t.Fatalf("a refused reserve changed the log")
	}
	if r := st.reserve(t0+ms(4), t0+ms(4), p); !r.ok || r.slot != t0+ms(204) {
		t.Fatalf("reserve at 4ms = %+v, want granted at 204ms", r)
	}
}

func TestReserveNotBefore(t *testing.T) {
	p := testParams(t, Config{})
	var st state
	if r := st.reserve(t0+ms(3), t0, p); !r.ok || r.slot != t0+ms(3) {
		t.Fatalf("reserve = %+v, want granted at notBefore", r)
	}
	if r := st.reserve(t0-ms(3), t0+ms(100), p); !r.ok || r.slot != t0+ms(100) {
		t.Fatalf("reserve = %+v, want granted at now when notBefore is past", r)
	}
}

func TestNthSlot(t *testing.T) {
	p := testParams(t, Config{})
	busy := state{}
	drain(t, &busy, p, t0, 20) // 20 grants paced from t0: the last at 969ms
	for _, tc := range []struct {
		name string
		st   state
		now  int64
		n    int
		want int64
	}{
		{"idle, first", state{}, t0, 1, t0},
		{"idle, sixth", state{}, t0, 6, t0 + 5*ms(51)},
		{"behind a full log", busy, t0, 1, t0 + ms(1020)},
		{"behind a full log, third", busy, t0, 3, t0 + ms(1020) + 2*ms(51)},
		{"cold", coldState(t0, p), t0, 1, t0 + ms(2020)},
	} {
		before := slices.Clone(tc.st.grants)
		if got := tc.st.nthSlot(tc.now, tc.n, p); got != tc.want {
			t.Errorf("%s: nthSlot = %v, want %v", tc.name, time.Duration(got-t0), time.Duration(tc.want-t0))
		}
		if !slices.Equal(tc.st.grants, before) {
			t.Errorf("%s: nthSlot changed the log", tc.name)
		}
	}
}

func TestColdStart(t *testing.T) {
	p := testParams(t, Config{})
	st := coldState(t0, p)
	r := st.reserve(t0, t0, p)
	want := t0 + int64(time.Second) + int64(1020*time.Millisecond) // horizon + window + guard
	if r.ok || r.slot != want {
		t.Fatalf("first reserve on a cold state = %+v, want refused until %v", r, time.Duration(want-t0))
	}
	got := drain(t, &st, p, t0, 21)
	if got[0] != want {
		t.Fatalf("first grant at %v, want %v", time.Duration(got[0]-t0), time.Duration(want-t0))
	}
	// Reservations made before the state was lost lie at or before
	// t0+horizon; every new grant is a full span after them.
	if d := got[0] - (t0 + p.horizon); d < p.span {
		t.Fatalf("first grant only %v after the latest possible old grant", time.Duration(d))
	}
	if d := got[20] - got[0]; d != 20*ms(51) {
		t.Fatalf("after the cold start grants are not paced normally: 21 grants over %v", time.Duration(d))
	}
}

func TestThrottleOncePerEvent(t *testing.T) {
	p := testParams(t, Config{}) // decrease 0.85, holdoff 1s
	var st state
	steps := []struct {
		at      float64 // ms after t0
		changed bool
		to      float64
	}{
		{0, true, 20 / 1.02 * 0.85},                            // from the pace cap 19.6/s
		{10, false, 20 / 1.02 * 0.85},                          // same event, another replica
		{999, false, 20 / 1.02 * 0.85},                         // still inside the holdoff
		{1000, true, st2rate(t, p, 20/1.02, 1000) * 0.85},      // a new event
		{1500, false, st2rate(t, p, 20/1.02, 1000) * 0.85 * 1}, // ignored again
	}
	for i, s := range steps {
		changed, _, to := st.throttle(t0+ms(s.at), p)
		if changed != s.changed {
			t.Fatalf("step %d: throttle at %vms changed = %v, want %v", i, s.at, changed, s.changed)
		}
		if s.changed && math.Abs(to-s.to) > 0.01 {
			t.Fatalf("step %d: rate after decrease %.3f, want %.3f", i, to, s.to)
		}
	}
}

// st2rate is the rate 'after' ms after a decrease from 'from' (with defaults).
func st2rate(t *testing.T, p params, from float64, after float64) float64 {
	t.Helper()
	var st state
	st.throttle(t0, p)
	if math.Abs(st.peak-from) > 1e-9 {
		t.Fatalf("peak %v, want %v", st.peak, from)
	}
	return st.effectiveRate(t0+ms(after), p)
}

func TestRecoveryCurve(t *testing.T) {
	p := testParams(t, Config{}) // recovery 15s, min 1, max 20
	K := 15 * time.Second
	st := state{decreasedAt: t0, peak: 10, drop: 1.5, recovery: int64(K)}
	at := func(d time.Duration) float64 { return st.effectiveRate(t0+int64(d), p) }
	for _, tc := range []struct {
		after time.Duration
		want  float64
	}{
		{0, 8.5},                     // peak - drop
		{K / 2, 10 - 1.5/8},          // concave: most of the way back at half time
		{K, 10},                      // back at the peak
		{3 * K / 2, 10 + 1.5/8},      // convex: slow probing just above it
		{2 * K, 11.5},                // peak + drop
		{3 * K, 20},                  // 10+1.5*8 = 22, capped at Limit/Window
		{-time.Second, 8.5},          // a replica whose clock is behind sees the floor
		{100 * time.Hour, p.maxRate}, // far later, capped
	} {
		if got := at(tc.after); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("rate %v after the decrease = %.4f, want %.4f", tc.after, got, tc.want)
		}
	}
	prev := 0.0
	for d := time.Duration(0); d <= 4*K; d += 100 * time.Millisecond {
		r := at(d)
		if r < prev {
			t.Fatalf("rate decreases during recovery at %v: %v < %v", d, r, prev)
		}
		prev = r
	}
	if first, second := at(K/2)-at(0), at(K)-at(K/2); first <= second {
		t.Errorf("recovery below the peak is not concave: +%.3f then +%.3f", first, second)
	}
	if first, second := at(3*K/2)-at(K), at(2*K)-at(3*K/2); first >= second {
		t.Errorf("probing above the peak does not accelerate: +%.3f then +%.3f", first, second)
	}
}

func TestMinRateFloor(t *testing.T) {
	p := testParams(t, Config{MinRate: 2})
	var st state
	now := t0
	for range 30 {
		st.throttle(now, p)
		if r := st.effectiveRate(now, p); r < 2 {
			t.Fatalf("rate %.3f below MinRate 2", r)
		}
		now += p.holdoff
	}
	if r := st.effectiveRate(now, p); r != 2 {
		t.Fatalf("after 30 decreases the rate is %.3f, want the floor 2", r)
	}
	if got := st.interval(now, p); got != int64(500*time.Millisecond) {
		t.Fatalf("pacing at the floor: %v, want 500ms", time.Duration(got))
	}
	// Even from the floor the rate recovers fully.
	if r := st.effectiveRate(now+int64(5*p.recovery), p); r != p.maxRate {
		t.Fatalf("rate 5 recovery periods after the floor: %.3f, want %v", r, p.maxRate)
	}
}

func TestReserveClearsRecoveredDecrease(t *testing.T) {
	p := testParams(t, Config{})
	var st state
	st.throttle(t0, p)
	if r := st.reserve(t0+ms(10), t0+ms(10), p); !r.ok || r.recovered {
		t.Fatalf("reserve right after a decrease = %+v, want granted, not recovered", r)
	}
	if st.decreasedAt == 0 {
		t.Fatalf("decrease cleared too early")
	}
	later := t0 + 3*p.recovery
	if r := st.reserve(later, later, p); !r.ok || !r.recovered {
		t.Fatalf("reserve after full recovery = %+v, want granted and recovered", r)
	}
	if st.decreasedAt != 0 || st.effectiveRate(later, p) != p.maxRate {
		t.Fatalf("decrease not cleared: %+v", st)
	}
	if r := st.reserve(later+ms(100), later+ms(100), p); r.recovered {
		t.Fatalf("recovery reported twice")
	}
}

func TestThrottleWithClockBehind(t *testing.T) {
	p := testParams(t, Config{})
	var st state
	st.throttle(t0, p)
	// A replica whose clock is 50ms behind the one that decreased reports
	// the same event: it must not cut again.
	if changed, _, _ := st.throttle(t0-ms(50), p); changed {
		t.Fatalf("throttle from a lagging clock cut the rate again")
	}
}

func TestStateEncoding(t *testing.T) {
	p := testParams(t, Config{})
	st := state{grants: []int64{t0, t0 + 5, t0 + 9}, decreasedAt: t0 - 7, peak: 12.5, drop: 1.875, recovery: int64(15 * time.Second)}
	b := st.encode(p)
	got, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.grants, st.grants) || got.decreasedAt != st.decreasedAt || got.peak != st.peak ||
		got.drop != st.drop || got.recovery != st.recovery || got.writerLimit != 20 || got.writerSpan != p.span {
		t.Fatalf("decode(encode(s)) = %+v, want %+v", got, st)
	}
	if len(b) != stateHeaderSize+8*3 {
		t.Fatalf("encoded size %d", len(b))
	}
	full := coldState(t0, p).encode(p)
	if len(full) > 256 {
		t.Fatalf("a full log takes %d bytes", len(full))
	}

	corrupt := func(f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short header", b[:10]},
		{"other version", corrupt(func(b []byte) []byte { b[0] = 2; return b })},
		{"truncated grants", b[:len(b)-1]},
		{"extra bytes", append(bytes.Clone(b), 0)},
		{"grants out of order", corrupt(func(b []byte) []byte { b[stateHeaderSize+7] += 6; return b })}, // t0+6 before t0+5
		{"NaN peak", corrupt(func(b []byte) []byte { copy(b[19:27], []byte{0x7f, 0xf8, 0, 0, 0, 0, 0, 1}); return b })},
	} {
		if _, err := decodeState(tc.b); !errors.Is(err, errBadState) {
			t.Errorf("%s: decode error = %v, want errBadState", tc.name, err)
		}
	}
}
