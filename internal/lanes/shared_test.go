package lanes

import (
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/natstest"
)

// Handles in different replicas deciding at the same time make the same
// decisions one handle would: every decision is recorded in the one State
// (a compare-and-set that loses decides again on the winner's State).
func TestSharedDecisionsAreGlobal(t *testing.T) {
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "LANES"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := Flow{Lane: 2, Token: "a"}, Flow{Lane: 2, Token: "b"}
	cfg := DefaultConfig()
	cfg.Weights = map[string]float64{"a": 3}
	backlog := map[Flow]uint64{a: 1 << 20, b: 1 << 20}
	var mu sync.Mutex
	got := map[Flow]int{}
	var wg sync.WaitGroup
	var handles []*Shared
	for range 3 {
		s, err := NewShared(kv, "q.lanes", cfg)
		if err != nil {
			t.Fatal(err)
		}
		handles = append(handles, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				f, ok, err := s.Pick(t.Context(), backlog)
				if err != nil || !ok {
					t.Error(err, ok)
					return
				}
				mu.Lock()
				got[f]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if got[a] != 225 || got[b] != 75 {
		t.Fatalf("picks = %v; want exactly 225:75 across the handles", got)
	}
	var conflicts uint64
	for _, s := range handles {
		conflicts += s.Conflicts()
	}
	t.Logf("conflicts: %d", conflicts)
}
