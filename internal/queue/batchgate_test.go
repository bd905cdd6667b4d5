package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
)

// fakeGate is a BatchGate with a fixed set of cancelled batches; it records
// the dead letters it is told of, and fails the first failFirst of them.
type fakeGate struct {
	mu        sync.Mutex
	cancelled map[string]bool
	dead      []string
	failFirst int
}

func (g *fakeGate) Cancelled(_ context.Context, id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cancelled[id]
}

func (g *fakeGate) DeadLettered(_ context.Context, id, key string, reason client.DeadLetterReason) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failFirst > 0 {
		g.failFirst--
		return errors.New("bucket unavailable")
	}
	g.dead = append(g.dead, id+"/"+key+"/"+string(reason))
	return nil
}

// deliverBatched delivers reviewBody as key-1 of batch until acked.
func deliverBatched(t *testing.T, p *Processor, clk *clock, batch string, seq uint64) {
	t.Helper()
	d := Delivery{Data: reviewBody, Header: map[string][]string{client.HeaderKey: {"key-1"}, client.HeaderBatch: {batch}},
		StreamSeq: seq, Timestamp: clk.Now()}
	for n := 1; n <= 50; n++ {
		d.NumDelivered = uint64(n)
		if dec := p.Handle(context.Background(), d); dec.Action == ActionAck {
			return
		}
		clk.advance(time.Second)
	}
	t.Fatal("not settled")
}

// A request of a cancelled batch is dead-lettered batch_cancelled with no
// call, its batch on the dead letter, and the member told (a failed member
// write hands the message back and is made again); one of a batch not
// cancelled is submitted, its result carrying the batch.
func TestCancelledBatchIsRefusedBeforeTheCall(t *testing.T) {
	clk := t0c()
	api := &scriptedAPI{clk: clk}
	p, _, out := newMemProcessor(clk, api)
	gate := &fakeGate{cancelled: map[string]bool{"b-cancelled": true}, failFirst: 1}
	p.Batches = gate
	deliverBatched(t, p, clk, "b-cancelled", 1)
	if api.calls != 0 || len(out.dead) != 1 || out.dead[0].Reason != client.ReasonBatchCancelled || out.dead[0].Batch != "b-cancelled" ||
		out.dead[0].Attempts != 0 {
		t.Fatalf("%d calls, dead letters %+v", api.calls, out.dead)
	}
	if len(gate.dead) != 1 || gate.dead[0] != "b-cancelled/key-1/batch_cancelled" {
		t.Errorf("member writes %v", gate.dead)
	}

	clk2 := t0c()
	api2 := &scriptedAPI{clk: clk2}
	p2, _, out2 := newMemProcessor(clk2, api2)
	p2.Batches = gate
	deliverBatched(t, p2, clk2, "b-running", 1)
	if r, ok := out2.results["key-1"]; !ok || r.Batch != "b-running" || api2.calls != 1 {
		t.Errorf("result %+v (%v), %d calls", r, ok, api2.calls)
	}
}

// A call whose outcome is unknown may have created the group: when the
// batch is cancelled meanwhile, the request is not refused (that would
// strand a group nobody follows); the lookup finds the group and the
// result is published, for the tracker to terminate.
func TestCancelledBatchDoesNotRefuseAMaybeCreatedKey(t *testing.T) {
	clk := t0c()
	api := &scriptedAPI{clk: clk, lag: 5 * time.Second, script: []answer{{create: true, err: errGateway}}}
	p, _, out := newMemProcessor(clk, api)
	gate := &fakeGate{cancelled: map[string]bool{}}
	p.Batches = gate
	d := Delivery{Data: reviewBody, Header: map[string][]string{client.HeaderKey: {"key-1"}, client.HeaderBatch: {"b"}},
		StreamSeq: 1, Timestamp: clk.Now(), NumDelivered: 1}
	p.Handle(context.Background(), d) // the call: unknown outcome
	gate.mu.Lock()
	gate.cancelled["b"] = true
	gate.mu.Unlock()
	deliverBatched(t, p, clk, "b", 1)
	if r, ok := out.results["key-1"]; !ok || r.RunGroupID != "run-1" || len(out.dead) != 0 || len(api.groups) != 1 {
		t.Errorf("result %+v (%v), dead letters %+v, %d groups", r, ok, out.dead, len(api.groups))
	}
}
