package tracker

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/batch"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// publishBatchResult publishes key's result as a worker does for a request
// of batch id.
func (e *env) publishBatchResult(ctx context.Context, key, id string) {
	e.t.Helper()
	e.mu.Lock()
	g := e.groupOf[key]
	e.mu.Unlock()
	r := client.Result{Key: key, RunGroupID: g, Attempts: 1, SubmittedAt: time.Now().UTC(), Worker: "w", Batch: id}
	if _, err := queue.PublishResult(ctx, e.js, e.topo, r); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) batchesKV(ctx context.Context) jetstream.KeyValue {
	e.t.Helper()
	kv, err := e.js.KeyValue(ctx, e.topo.BatchesBucket)
	if err != nil {
		e.t.Fatal(err)
	}
	return kv
}

// completions returns the messages on batch id's completion subject.
func (e *env) completions(ctx context.Context, id string) []client.BatchCompleted {
	e.t.Helper()
	s, err := e.js.Stream(ctx, e.topo.StatusStream)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []client.BatchCompleted
	next := uint64(1)
	for {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(e.topo.BatchSubject(id)))
		if err != nil {
			return out
		}
		var ev client.BatchCompleted
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, ev)
		next = m.Sequence + 1
	}
}

func registerBatch(ctx context.Context, t *testing.T, e *env, id string, keys []string) {
	t.Helper()
	ms := make([]client.BatchMember, len(keys))
	for i, k := range keys {
		ms[i] = client.BatchMember{Key: k, Location: fmt.Sprintf("samples.csv:row%d", i+2)}
	}
	if err := client.New(e.js, client.WithTopology(e.topo.Topology)).RegisterBatch(ctx, id, ms); err != nil {
		t.Fatal(err)
	}
}

// A registered batch is followed member by member (its dead-lettered
// member counts as terminal), and its completion event is published
// exactly once although two trackers run and the detection is repeated as
// a new leader would (the record's mark lost); a batch only seen through
// the header gets its member records, and no completion (its size is not
// known).
func TestBatchProgressAndCompletionOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fastExecution)
	cl := client.New(e.js, client.WithTopology(e.topo.Topology))
	var keys []string
	for i := range 12 {
		keys = append(keys, e.submit(ctx, i, i%4, ""))
	}
	const id = "enqueue-20260101T000000Z-abc123"
	registerBatch(ctx, t, e, id, append(keys, "never-submitted"))
	store := &batch.Store{KV: e.batchesKV(ctx)}
	if err := store.DeadLettered(ctx, id, "never-submitted", client.ReasonPermanentError); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		e.publishBatchResult(ctx, k, id)
	}
	loose := e.submit(ctx, 99, 0, "")
	e.publishBatchResult(ctx, loose, "producer-batch")

	a := e.startTracker(trackerOpts{worker: "a"})
	b := e.startTracker(trackerOpts{worker: "b"})
	waitFor(t, "the completion event", 30*time.Second, func() bool { return len(e.completions(ctx, id)) > 0 })
	rec, ms, err := cl.Batch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// A second detector, as a new leader whose predecessor died before
	// marking the record: it finds every member terminal again.
	rec.CompletedAt = nil
	if err := leader(t, a, b).complete(ctx, newBatches(e.batchesKV(ctx), time.Now), rec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	evs := e.completions(ctx, id)
	if len(evs) != 1 {
		t.Fatalf("%d completion events, want 1", len(evs))
	}
	ev := evs[0]
	if ev.ID != id || ev.Members != 13 || ev.DeadLettered != 1 || ev.Succeeded+ev.Failed != 12 || ev.Cancelled != 0 || ev.FirstSubmit == nil {
		t.Errorf("completion %+v", ev)
	}
	if len(ms) != 13 {
		t.Fatalf("%d members, want 13", len(ms))
	}
	for _, m := range ms {
		want := e.groupOf[m.Key]
		if !m.Terminal || m.RunGroupID != want || m.Location == "" || (want == "") != m.DeadLettered {
			t.Errorf("member %+v (group %q)", m, want)
		}
	}
	if c := client.CountBatch(ms); c.Succeeded != ev.Succeeded || c.Failed != ev.Failed {
		t.Errorf("counts %+v, event %+v", c, ev)
	}
	waitFor(t, "the record's completion mark", 5*time.Second, func() bool {
		r, _, _ := cl.Batch(ctx, id)
		return r.CompletedAt != nil
	})

	hrec, hms, err := cl.Batch(ctx, "producer-batch")
	if err != nil {
		t.Fatal(err)
	}
	if hrec.Members != 0 || len(hms) != 1 || hms[0].RunGroupID != e.groupOf[loose] || hms[0].Location != "" {
		t.Errorf("header-only batch: %+v %+v", hrec, hms)
	}
	waitFor(t, "the header-only member to end", 10*time.Second, func() bool {
		_, hms, _ := cl.Batch(ctx, "producer-batch")
		return len(hms) == 1 && hms[0].Terminal
	})
	if n := len(e.completions(ctx, "producer-batch")); n != 0 {
		t.Errorf("a batch of unknown size got %d completion events", n)
	}
}

// Cancelling a batch whose groups run: the leader terminates each running
// member's group, and a late result's group too; the sandbox's registry
// shows them Terminated; the completion event counts them cancelled with
// the member a worker refused.
func TestCancelledBatchTerminatesItsRunningGroups(t *testing.T) {
	ctx := context.Background()
	exec := sandbox.Execution{Enabled: true, QueueDelay: 100 * time.Millisecond, DurationMin: time.Hour, DurationMax: 2 * time.Hour}
	e := newEnv(t, exec)
	cl := client.New(e.js, client.WithTopology(e.topo.Topology))
	var keys []string
	for i := range 8 {
		keys = append(keys, e.submit(ctx, i, 0, ""))
	}
	const id = "to-cancel"
	registerBatch(ctx, t, e, id, append(keys, "queued"))
	for _, k := range keys[:7] {
		e.publishBatchResult(ctx, k, id)
	}
	tr := e.startTracker(trackerOpts{rate: 20, share: 0.5})
	waitFor(t, "the members to run", 15*time.Second, func() bool {
		_, ms, _ := cl.Batch(ctx, id)
		n := 0
		for _, m := range ms {
			if m.Status == sandbox.StatusRunning {
				n++
			}
		}
		return n == 7
	})
	if _, err := cl.CancelBatch(ctx, id); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The worker's refusal of the request still queued, and a result that
	// arrives after the cancel.
	if err := (&batch.Store{KV: e.batchesKV(ctx)}).DeadLettered(ctx, id, "queued", client.ReasonBatchCancelled); err != nil {
		t.Fatal(err)
	}
	e.publishBatchResult(ctx, keys[7], id)
	waitFor(t, "the completion event", 20*time.Second, func() bool { return len(e.completions(ctx, id)) > 0 })
	t.Logf("cancel of 8 running members to the completion event: %v", time.Since(start).Round(time.Millisecond))
	ev := e.completions(ctx, id)[0]
	if ev.Members != 9 || ev.Cancelled != 9 {
		t.Errorf("completion %+v, want 9 cancelled", ev)
	}
	for _, g := range e.sb.RunGroups() {
		if g.Status != sandbox.StatusTerminated {
			t.Errorf("group %s is %s, want Terminated", g.RunGroupId, g.Status)
		}
	}
	calls := e.sb.Stats().Actions["TerminateRunGroup"]
	if calls.Calls["success"] != 8 {
		t.Errorf("TerminateRunGroup calls %v, want 8 successes", calls.Calls)
	}
	if got := metricValue(t, tr, "omicsq_tracker_terminate_calls_total", "class", "success"); got != 8 {
		t.Errorf("omicsq_tracker_terminate_calls_total{class=success} = %v, want 8", got)
	}
	if got := metricValue(t, tr, "omicsq_tracker_events_total", "kind", "batch"); got != 1 {
		t.Errorf("omicsq_tracker_events_total{kind=batch} = %v, want 1", got)
	}
	if tr.Stats().Active != 0 {
		waitFor(t, "the active set to empty", 5*time.Second, func() bool { return tr.Stats().Active == 0 })
	}
}
