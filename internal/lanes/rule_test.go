package lanes

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/omicsq/omicsq/client"
)

// run makes n decisions over backlog, taking one message from each flow
// picked, and counts the picks per flow.
func run(t *testing.T, st *State, backlog map[Flow]uint64, cfg Config, n int) map[Flow]int {
	t.Helper()
	got := map[Flow]int{}
	for range n {
		f, ok := Pick(st, backlog, cfg)
		if !ok {
			break
		}
		if backlog[f] == 0 {
			t.Fatalf("picked %v without backlog", f)
		}
		backlog[f]--
		got[f]++
	}
	return got
}

var (
	urgent  = Flow{Lane: 0, Token: "a"}
	normal  = Flow{Lane: 1, Token: "a"}
	routine = Flow{Lane: 2, Token: "a"}
	legacy  = Flow{Lane: 2}
)

func TestStrictPriorityWithoutMinimumShares(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MinShare = [Lanes]float64{}
	st := &State{}
	got := run(t, st, map[Flow]uint64{urgent: 50, normal: 1000, routine: 1000}, cfg, 60)
	if got[urgent] != 50 || got[normal] != 10 || got[routine] != 0 {
		t.Fatalf("picks = %v; want the 50 urgent first, then normal only", got)
	}
}

func TestMinimumSharesAreGuaranteedAndNoMore(t *testing.T) {
	cfg := DefaultConfig() // normal 10%, routine 5% of the last 100
	st := &State{}
	got := run(t, st, map[Flow]uint64{urgent: 100000, normal: 100000, routine: 100000}, cfg, 1000)
	if got[normal] < 99 || got[normal] > 101 || got[routine] < 49 || got[routine] > 51 {
		t.Fatalf("picks = %v; want normal 100 and routine 50 of 1000", got)
	}
	// Only urgent and routine backlogged: routine still gets its 5%.
	st = &State{}
	got = run(t, st, map[Flow]uint64{urgent: 100000, routine: 100000}, cfg, 1000)
	if got[routine] < 49 || got[routine] > 51 {
		t.Fatalf("picks = %v; want routine 50 of 1000", got)
	}
}

func TestIdleLanesShareIsUsedByOthers(t *testing.T) {
	st := &State{}
	got := run(t, st, map[Flow]uint64{routine: 1000, legacy: 1000}, DefaultConfig(), 400)
	if got[routine]+got[legacy] != 400 || got[routine] != 200 {
		t.Fatalf("picks = %v; want all 400 to the routine lane, split 1:1", got)
	}
}

func TestWeightedFairnessWithinALane(t *testing.T) {
	big, small := Flow{Lane: 2, Token: client.KeyToken("big")}, Flow{Lane: 2, Token: client.KeyToken("small")}
	cfg := DefaultConfig()
	cfg.Weights = map[string]float64{big.Token: 3}
	st := &State{}
	got := run(t, st, map[Flow]uint64{big: 5000, small: 5000}, cfg, 400)
	if got[big] != 300 || got[small] != 100 {
		t.Fatalf("picks = %v; want 300:100", got)
	}
	// 1:1, 5000 against 50: the small one is done within its first 100.
	st = &State{}
	backlog := map[Flow]uint64{big: 5000, small: 50}
	got = run(t, st, backlog, DefaultConfig(), 100)
	if got[small] != 50 {
		t.Fatalf("picks = %v; want the small flow's 50 within 100", got)
	}
}

func TestAJoiningFlowGetsNoCreditForIdleness(t *testing.T) {
	a, b := Flow{Lane: 2, Token: "a"}, Flow{Lane: 2, Token: "b"}
	st := &State{}
	run(t, st, map[Flow]uint64{a: 1000}, DefaultConfig(), 500)
	got := run(t, st, map[Flow]uint64{a: 1000, b: 1000}, DefaultConfig(), 10)
	if got[a] < 4 || got[b] < 4 {
		t.Fatalf("picks = %v; want them alternating after b joins", got)
	}
	if len(st.Pass) != 2 {
		t.Fatalf("passes = %v", st.Pass)
	}
	// Once a flow's pass is behind its lane's virtual time it is
	// forgotten: it would start there anyway.
	run(t, st, map[Flow]uint64{b: 1000}, DefaultConfig(), 3)
	if _, ok := st.Pass[a.id()]; ok {
		t.Fatalf("the pass of a flow left behind was kept: %v", st.Pass)
	}
}

// A flow missing from one decision's backlog (a replica's stale view) keeps
// a pass that is ahead, so it earns nothing by its absence: the split over
// the decisions it was present for stays the weights'.
func TestAnAbsentFlowEarnsNoCredit(t *testing.T) {
	a, b := Flow{Lane: 1, Token: "a"}, Flow{Lane: 1, Token: "b"}
	cfg := DefaultConfig()
	cfg.Weights = map[string]float64{"a": 3}
	st := &State{}
	got := map[Flow]int{}
	for i := range 400 {
		backlog := map[Flow]uint64{a: 1000, b: 1000}
		if i%7 == 3 {
			delete(backlog, b) // b is missing from this view
		}
		f, _ := Pick(st, backlog, cfg)
		got[f]++
	}
	// Without the absences 300:100; b's absences only give a more.
	if got[b] > 100 {
		t.Fatalf("picks = %v; b gained from being absent", got)
	}
}

func TestNothingToPick(t *testing.T) {
	if _, ok := Pick(&State{}, map[Flow]uint64{urgent: 0}, DefaultConfig()); ok {
		t.Fatal("picked a flow without backlog")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{MinShare: [Lanes]float64{0, 0.6, 0.5}, Window: 100, DefaultWeight: 1},
		{MinShare: [Lanes]float64{0, -1, 0}, Window: 100, DefaultWeight: 1},
		{Window: 0, DefaultWeight: 1},
		{Window: 10, DefaultWeight: 0},
		{Window: 10, DefaultWeight: 1, Weights: map[string]float64{"x": 0}},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// However many fairness keys were served in one round, the State keeps at
// most MaxPasses passes after a decision, so its KV value stays small; the
// ones forgotten are those nearest their lane's virtual time.
func TestPassesAreBounded(t *testing.T) {
	st := State{Pass: map[string]float64{}}
	for i := range MaxPasses + 500 {
		st.Pass[Flow{Lane: 2, Token: fmt.Sprintf("k%05d", i)}.id()] = float64(i)
	}
	f, ok := Pick(&st, map[Flow]uint64{{Lane: 2, Token: "new"}: 1}, DefaultConfig())
	if !ok || f.Token != "new" {
		t.Fatalf("Pick = %v, %v", f, ok)
	}
	if len(st.Pass) > MaxPasses {
		t.Fatalf("%d passes kept, want at most %d", len(st.Pass), MaxPasses)
	}
	if _, kept := st.Pass[Flow{Lane: 2, Token: fmt.Sprintf("k%05d", MaxPasses+499)}.id()]; !kept {
		t.Error("the pass furthest ahead was forgotten")
	}
	b, _ := json.Marshal(st)
	if len(b) > 512<<10 {
		t.Fatalf("the State encodes to %d bytes", len(b))
	}
}
