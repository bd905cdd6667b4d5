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

// A dead letter lands on its key's DLQ subject with the headers an operator
// filters by, and its message ID (prefixed dlq/) makes a retried publish of
// the same failure a no-op while another failure of the key lands again.
// (Requests are published by the public client: see client/client_test.go.)
func TestDeadLettersAreDeduplicatedByFailure(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := DefaultTopology()
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	d := client.DeadLetter{Key: "k1", Request: []byte(`{"Name":"n"}`), Reason: client.ReasonPermanentError,
		Error: client.Failure{Class: "permanent", Code: "ResourceNotFound.ApplicationNotExist"}}
	for _, msgID := range []string{"k1/1/1", "k1/1/1", "k1/2/1"} {
		if err := PublishDeadLetter(ctx, js, topo, d, msgID); err != nil {
			t.Fatalf("publish dead letter %s: %v", msgID, err)
		}
	}
	s, err := js.Stream(ctx, topo.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("DLQ holds %d messages, want 2 (the retried publish dropped)", info.State.Msgs)
	}
	m, err := s.GetLastMsgForSubject(ctx, topo.DLQSubject("k1"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(client.HeaderKey) != "k1" || m.Header.Get(client.HeaderReason) != string(client.ReasonPermanentError) ||
		m.Header.Get(client.HeaderErrorCode) != "ResourceNotFound.ApplicationNotExist" || m.Header.Get(client.HeaderMsgID) != "dlq/k1/2/1" {
		t.Errorf("dead letter headers: %v", m.Header)
	}
	if got, err := client.DecodeDeadLetter(m.Data); err != nil || got.Key != "k1" || got.Reason != client.ReasonPermanentError {
		t.Errorf("dead letter body: %+v, %v", got, err)
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
