package batch

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
)

func setup(t *testing.T) (*client.Client, *Store, *Gate) {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	if err := queue.Provision(t.Context(), js, topo); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), topo.BatchesBucket)
	if err != nil {
		t.Fatal(err)
	}
	return client.New(js, client.WithTopology(topo.Topology)), &Store{KV: kv}, NewGate(js, topo.BatchesBucket, nil)
}

// Writers of one member racing (a worker and the tracker, and more): no
// change is lost. A dead letter does not end a member that has a run group.
func TestMemberUpdatesAreNotLost(t *testing.T) {
	cl, st, _ := setup(t)
	ctx := t.Context()
	if err := cl.RegisterBatch(ctx, "b", []client.BatchMember{{Key: "k", Location: "s.csv:row2"}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if _, err := st.UpdateMember(ctx, "b", "k", func(m *client.BatchMember) bool {
				m.ErrorMessage += fmt.Sprintf("[%d]", i)
				return true
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	_, ms, err := cl.Batch(ctx, "b")
	if err != nil || len(ms) != 1 || len(ms[0].ErrorMessage) != 6*3 || ms[0].Location != "s.csv:row2" {
		t.Fatalf("%v %+v", err, ms)
	}
	if _, err := st.UpdateMember(ctx, "b", "k", func(m *client.BatchMember) bool { m.RunGroupID = "run-1"; return true }); err != nil {
		t.Fatal(err)
	}
	if err := st.DeadLettered(ctx, "b", "k", client.ReasonDuplicateInFlight); err != nil {
		t.Fatal(err)
	}
	if _, ms, _ := cl.Batch(ctx, "b"); ms[0].DeadLettered || ms[0].Terminal {
		t.Errorf("a refused duplicate ended a member with a run group: %+v", ms[0])
	}
	// A header-only member is created by the first write.
	if err := st.DeadLettered(ctx, "loose", "k2", client.ReasonPermanentError); err != nil {
		t.Fatal(err)
	}
	if _, ms, err := cl.Batch(ctx, "loose"); err != nil || len(ms) != 1 || !ms[0].Terminal || ms[0].Key != "k2" {
		t.Errorf("header-only member: %v %+v", err, ms)
	}
}

// The gate learns cancellations from the watch; a caller at start waits
// for its first load, so a batch cancelled before the worker started is
// known at its first request.
func TestGateSeesCancellations(t *testing.T) {
	cl, _, g := setup(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for _, id := range []string{"early", "late", "open"} {
		if err := cl.RegisterBatch(ctx, id, []client.BatchMember{{Key: "k"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.CancelBatch(ctx, "early"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if !g.Cancelled(ctx, "early") || g.Cancelled(ctx, "open") || g.Cancelled(ctx, "") {
		t.Fatal("the first load is not what the bucket holds")
	}
	if _, err := cl.CancelBatch(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !g.Cancelled(ctx, "late") {
		if time.Now().After(deadline) {
			t.Fatal("the gate did not see the cancellation")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := g.DeadLettered(ctx, "late", "k", client.ReasonBatchCancelled); err != nil {
		t.Fatal(err)
	}
	if _, ms, _ := cl.Batch(ctx, "late"); len(ms) != 1 || ms[0].Outcome() != client.BatchCancelled {
		t.Errorf("members %+v", ms)
	}
}
