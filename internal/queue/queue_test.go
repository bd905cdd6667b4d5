package queue

import (
	"context"
	"github.com/omicsq/omicsq/client"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natstest"
)

func TestProvisionIsIdempotentAndVerifyBinds(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := DefaultTopology()
	if err := Verify(ctx, js, topo); err == nil {
		t.Fatal("Verify on an empty server succeeded; bind-only mode must fail when streams are missing")
	}
	for i := 0; i < 2; i++ {
		if err := Provision(ctx, js, topo); err != nil {
			t.Fatalf("Provision #%d: %v", i+1, err)
		}
	}
	if err := Verify(ctx, js, topo); err != nil {
		t.Fatalf("Verify after Provision: %v", err)
	}
}

func TestResultsAreExactlyOncePerKey(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := DefaultTopology()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	r := client.Result{Key: "k1", RunGroupID: "run-a", Attempts: 1}
	if dup, err := PublishResult(ctx, js, topo, r); err != nil || dup {
		t.Fatalf("first PublishResult = %v, %v; want false, nil", dup, err)
	}
	if dup, err := PublishResult(ctx, js, topo, r); err != nil || !dup {
		t.Fatalf("second PublishResult = %v, %v; want true, nil", dup, err)
	}
	// Even with another message ID (outside the de-duplication window), the
	// stream refuses a second result on the same subject.
	m := nats.NewMsg(topo.ResultSubject("k1"))
	m.Data = []byte(`{"key":"k1","run_group_id":"run-b"}`)
	m.Header.Set(client.HeaderMsgID, "another-id")
	if _, err := js.PublishMsg(ctx, m); err == nil {
		t.Fatal("a second result on the same subject was accepted")
	}
	s, err := js.Stream(ctx, topo.ResultsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("results stream holds %d messages, want 1", info.State.Msgs)
	}
}

func TestPublishRequestDeduplicatesByKey(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := DefaultTopology()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	if dup, err := PublishRequest(ctx, js, topo, "k1", []byte(`{}`), nil); err != nil || dup {
		t.Fatalf("first publish = %v, %v", dup, err)
	}
	if dup, err := PublishRequest(ctx, js, topo, "k1", []byte(`{}`), nil); err != nil || !dup {
		t.Fatalf("second publish = %v, %v; want duplicate", dup, err)
	}
	if err := RedriveRequest(ctx, js, topo, "k1", 7, []byte(`{}`)); err != nil {
		t.Fatalf("redrive within the window: %v", err)
	}
	s, _ := js.Stream(ctx, topo.RequestsStream)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("requests stream holds %d messages, want 2 (original + redrive)", info.State.Msgs)
	}
	if _, err := PublishRequest(ctx, js, topo, "has space", nil, nil); err == nil {
		t.Fatal("a key with a space was accepted")
	}
}

func TestLedgerCompareAndSet(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := DefaultTopology()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(ctx, js, topo.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, rev, err := l.Get(ctx, "a key/with:odd chars")
	if err != nil || rev != 0 || e.State != ledger.StatePending {
		t.Fatalf("Get of a new key = %+v, %d, %v", e, rev, err)
	}
	e.Calls, e.NeedsLookup = 1, true
	rev1, err := l.Put(ctx, e, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Put(ctx, e, 0); err != ledger.ErrConflict {
		t.Fatalf("second create = %v, want ErrConflict", err)
	}
	e.State = ledger.StateSubmitted
	if _, err := l.Put(ctx, e, rev1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Put(ctx, e, rev1); err != ledger.ErrConflict {
		t.Fatalf("stale update = %v, want ErrConflict", err)
	}
	got, _, err := l.Get(ctx, "a key/with:odd chars")
	if err != nil || got.State != ledger.StateSubmitted || got.Calls != 1 || !got.NeedsLookup {
		t.Fatalf("Get = %+v, %v", got, err)
	}
}

func TestValidateAndDeriveKey(t *testing.T) {
	for _, bad := range []string{"", "a b", "tab\tkey", string(make([]byte, client.MaxKeyBytes+1)), "\xff"} {
		if client.ValidateKey(bad) == nil {
			t.Errorf("ValidateKey(%q) = nil, want an error", bad)
		}
	}
	if err := client.ValidateKey("LIMS-2026-000123/rerun-2"); err != nil {
		t.Errorf("ValidateKey(valid) = %v", err)
	}
	a, b := client.DeriveKey([]byte(`{"Name":"x"}`)), client.DeriveKey([]byte(`{"Name":"y"}`))
	if a == b || a != client.DeriveKey([]byte(`{"Name":"x"}`)) || client.ValidateKey(a) != nil {
		t.Fatalf("DeriveKey not deterministic and distinct: %s %s", a, b)
	}
}

func TestDecodeDeadLetterRequiresTheOriginal(t *testing.T) {
	for _, body := range []string{
		`{"key":"k","reason":"permanent_error","error":{"class":"permanent","code":"X"}}`,
		`{"key":"k","reason":"permanent_error","request":null,"error":{"class":"permanent","code":"X"}}`,
	} {
		if _, err := client.DecodeDeadLetter([]byte(body)); err == nil {
			t.Errorf("DecodeDeadLetter(%s) = nil error, want one: the original request is missing", body)
		}
	}
	for _, body := range []string{
		`{"key":"k","reason":"invalid_request","raw_base64":"eA==","error":{"class":"invalid","code":"X"}}`,
		`{"key":"k","reason":"invalid_request","error":{"class":"invalid","code":"X"}}`, // an empty original
	} {
		if _, err := client.DecodeDeadLetter([]byte(body)); err != nil {
			t.Errorf("DecodeDeadLetter(%s): %v", body, err)
		}
	}
}
