package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
)

// RegisterBatch writes the record and every member, fast enough for a
// large sample sheet; registering again keeps the members' progress; a
// record of another size is refused.
func TestRegisterBatch(t *testing.T) {
	ctx := context.Background()
	js, topo := setup(t)
	c := client.New(js, client.WithTopology(topo.Topology))
	const n = 10_000
	ms := make([]client.BatchMember, n)
	for i := range ms {
		ms[i] = client.BatchMember{Key: fmt.Sprintf("sample-%05d", i), Location: fmt.Sprintf("samples.csv:row%d", i+2)}
	}
	start := time.Now()
	if err := c.RegisterBatch(ctx, "sheet-1", ms); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	start = time.Now()
	rec, got, err := c.Batch(ctx, "sheet-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %d members in %v; read them back in %v", n, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("registering %d members took %v", n, took)
	}
	if rec.ID != "sheet-1" || rec.Members != n || rec.CreatedAt.IsZero() || len(got) != n {
		t.Fatalf("record %+v, %d members", rec, len(got))
	}
	if c := client.CountBatch(got); c.Members != n || c.Terminal != 0 {
		t.Errorf("counts %+v", c)
	}
	// Registering again is a no-op; with another size, an error.
	if err := c.RegisterBatch(ctx, "sheet-1", ms); err != nil {
		t.Errorf("second registration: %v", err)
	}
	if err := c.RegisterBatch(ctx, "sheet-1", ms[:3]); err == nil {
		t.Error("a registration of another size was accepted")
	}
	// A record of unknown size (the tracker's, for a header-only batch)
	// takes the size of a registration.
	kv, err := js.KeyValue(ctx, topo.BatchesBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, client.BatchToken("loose"), []byte(`{"id":"loose","created_at":"2026-01-01T00:00:00Z","members":0}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterBatch(ctx, "loose", ms[:2]); err != nil {
		t.Fatal(err)
	}
	if rec, _, err := c.Batch(ctx, "loose"); err != nil || rec.Members != 2 {
		t.Errorf("header-only record after registering: %+v %v", rec, err)
	}
	if _, _, err := c.Batch(ctx, "no-such-batch"); !errors.Is(err, client.ErrBatchNotFound) {
		t.Errorf("unknown batch: %v", err)
	}
}

// Publish sets the batch header; an unusable batch ID is refused before
// anything is published, and the error does not repeat it.
func TestPublishSetsTheBatchHeader(t *testing.T) {
	ctx := context.Background()
	js, topo := setup(t)
	c := client.New(js, client.WithTopology(topo.Topology))
	r, err := client.NewRequest(body("batched"), "k-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Batch = "sheet-7"
	p, err := c.Publish(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, topo.RequestsStream)
	m, err := s.GetMsg(ctx, p.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(client.HeaderBatch); got != "sheet-7" {
		t.Errorf("batch header %q", got)
	}
	for _, bad := range []string{"has space", strings.Repeat("x", client.MaxBatchBytes+1), "ctl\x01"} {
		r.Batch = bad
		_, err := c.Publish(ctx, r)
		var ie *client.InvalidRequestError
		if !errors.As(err, &ie) || ie.Code != client.CodeInvalidBatch || strings.Contains(err.Error(), bad) {
			t.Errorf("batch %q: %v", bad, err)
		}
	}
	if client.BatchToken("sheet-7") != client.KeyToken("sheet-7") {
		t.Error("the batch token is not the key token's scheme")
	}
	if strings.HasPrefix(topo.BatchSubject("x"), topo.StatusPrefix+"."+client.KeyToken("x")) {
		t.Error("a batch subject falls under the key subjects of the same string")
	}
}

// CancelBatch sets the cancellation once, keeping the first time, and
// refuses a batch nobody knows.
func TestCancelBatch(t *testing.T) {
	ctx := context.Background()
	js, topo := setup(t)
	c := client.New(js, client.WithTopology(topo.Topology))
	if _, err := c.CancelBatch(ctx, "nothing"); !errors.Is(err, client.ErrBatchNotFound) {
		t.Errorf("cancel of an unknown batch: %v", err)
	}
	if err := c.RegisterBatch(ctx, "b", []client.BatchMember{{Key: "k"}}); err != nil {
		t.Fatal(err)
	}
	first, err := c.CancelBatch(ctx, "b")
	if err != nil || first.CancelledAt == nil {
		t.Fatalf("cancel: %+v %v", first, err)
	}
	again, err := c.CancelBatch(ctx, "b")
	if err != nil || !again.CancelledAt.Equal(*first.CancelledAt) {
		t.Errorf("second cancel: %+v %v", again, err)
	}
}

// A sheet that repeats a row registers the key once, so the record's size
// is what the tracker can complete; a cancelled or complete batch is not
// registered again.
func TestRegisterBatchDistinctKeysAndEndedRecords(t *testing.T) {
	ctx := context.Background()
	js, topo := setup(t)
	c := client.New(js, client.WithTopology(topo.Topology))
	if err := c.RegisterBatch(ctx, "dup", []client.BatchMember{{Key: "a"}, {Key: "b"}, {Key: "a"}}); err != nil {
		t.Fatal(err)
	}
	rec, ms, err := c.Batch(ctx, "dup")
	if err != nil || rec.Members != 2 || len(ms) != 2 {
		t.Fatalf("record %+v, %d members, %v: want 2 and 2", rec, len(ms), err)
	}
	if err := c.RegisterBatch(ctx, "bad", []client.BatchMember{{Key: "ok"}, {Key: ""}}); err == nil {
		t.Fatal("an invalid key was registered")
	}
	if _, _, err := c.Batch(ctx, "bad"); !errors.Is(err, client.ErrBatchNotFound) {
		t.Fatalf("a refused registration left a record: %v", err)
	}
	if _, err := c.CancelBatch(ctx, "dup"); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterBatch(ctx, "dup", []client.BatchMember{{Key: "a"}, {Key: "b"}}); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("registering a cancelled batch again: %v", err)
	}
}
