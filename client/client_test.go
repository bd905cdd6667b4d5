package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
)

// setup starts an embedded JetStream server with omicsq's streams.
func setup(t *testing.T) (jetstream.JetStream, queue.Topology) {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	if err := queue.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	return js, topo
}

func body(name string) []byte {
	return fmt.Appendf(nil, `{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":%q,"InputBase64":"e30="}`, name)
}

func TestNewRequestCanonicalisesAndDerivesKey(t *testing.T) {
	t.Parallel()
	a, err := client.NewRequest([]byte(`{"Name":"n","ApplicationId":"app","EnvironmentId":"env","InputBase64":"e30=","Description":""}`), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := client.NewRequest([]byte(`{ "EnvironmentId":"env", "InputBase64":"e30=", "ApplicationId":"app", "Name":"n" }`), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Key != b.Key || string(a.Body) != string(b.Body) || a.KeyGiven {
		t.Errorf("same request, different forms: %+v vs %+v", a, b)
	}
	if k, err := client.NewRequest(b.Body, "lims-1", 0); err != nil || k.Key != "lims-1" || !k.KeyGiven {
		t.Errorf("given key: %+v, %v", k, err)
	}
	_, err = client.NewRequest([]byte(`{"Name":"n","ApplicationId":"app","EnvironmentId":"env","InputBase64":"e30=","AccessMode":"OPEN"}`), "", 0)
	var ie *client.InvalidRequestError
	if !errors.As(err, &ie) || ie.Field != "AccessMode" || ie.Code == "" {
		t.Errorf("invalid AccessMode: %v", err)
	}
	if _, err := client.NewRequest(b.Body, "two words", 0); !errors.As(err, &ie) || ie.Code != client.CodeInvalidKey {
		t.Errorf("key with a space: %v", err)
	}
	if _, err := client.NewRequest(b.Body, "", 10); !errors.As(err, &ie) || ie.Code != "RequestSizeLimitExceeded" {
		t.Errorf("body over maxBytes: %v", err)
	}
}

func TestPublishBatchKeepsOrderAndDeduplicates(t *testing.T) {
	t.Parallel()
	js, _ := setup(t)
	c := client.New(js, client.WithPublishWindow(16))
	var reqs []client.Request
	for i := range 300 {
		r, err := client.NewRequest(body(fmt.Sprintf("s-%03d", i)), fmt.Sprintf("k-%03d", i), 0)
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, r)
	}
	ctx := context.Background()
	first, err := c.PublishBatch(ctx, reqs)
	if err != nil || len(first) != len(reqs) {
		t.Fatalf("published %d of %d: %v", len(first), len(reqs), err)
	}
	for i, p := range first {
		if p.Key != reqs[i].Key || p.Duplicate || (i > 0 && p.Sequence != first[i-1].Sequence+1) {
			t.Fatalf("ack %d = %+v after %+v", i, p, first[max(i-1, 0)])
		}
	}
	again, err := c.PublishBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range again {
		if !p.Duplicate || p.Sequence != first[i].Sequence {
			t.Fatalf("republish %d = %+v, want a duplicate of sequence %d", i, p, first[i].Sequence)
		}
	}
	s, _ := js.Stream(ctx, client.DefaultTopology().RequestsStream)
	if info, _ := s.Info(ctx); info.State.Msgs != 300 {
		t.Errorf("stream holds %d requests, want 300", info.State.Msgs)
	}
}

func TestPublishErrors(t *testing.T) {
	t.Parallel()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	c := client.New(js, client.WithPublishTimeout(2*time.Second))
	ctx := context.Background()
	if _, err := c.Publish(ctx, client.Request{Key: "k", Body: body("a")}); !errors.Is(err, client.ErrNoStream) {
		t.Errorf("no streams: %v, want ErrNoStream", err)
	}
	_, err := c.PublishBatch(ctx, []client.Request{{Key: "k", Body: body("a")}})
	var be *client.BatchError
	if !errors.As(err, &be) || be.Index != 0 || !errors.Is(err, client.ErrNoStream) {
		t.Errorf("batch without streams: %v", err)
	}
	var ie *client.InvalidRequestError
	if _, err := c.Publish(ctx, client.Request{Key: "", Body: body("a")}); !errors.As(err, &ie) {
		t.Errorf("empty key: %v", err)
	}
}

func TestWatchSettlesEachKeyOnce(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js)
	pub := func(key string) client.Published {
		p, err := c.Publish(ctx, client.Request{Key: key, Body: body(key)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	result := func(key string) {
		if _, err := queue.PublishResult(ctx, js, topo, client.Result{Key: key, RunGroupID: "rg-" + key}); err != nil {
			t.Fatal(err)
		}
	}
	dead := func(key string, seq uint64) {
		d := client.DeadLetter{Key: key, Request: body(key), Reason: client.ReasonPermanentError, StreamSequence: seq,
			Error: client.Failure{Class: "permanent", Code: "InvalidParameterValue.X"}}
		if err := queue.PublishDeadLetter(ctx, js, topo, d, fmt.Sprintf("%s/%d", key, seq)); err != nil {
			t.Fatal(err)
		}
	}
	before := pub("before")
	result("before") // stored before the watch: found by direct get
	old := pub("old")
	dead("old", old.Sequence)   // the dead letter of an earlier publish
	renewed := pub("old-again") // stands for the key's next publish
	renewed.Key = "old"
	after, never := pub("after"), pub("never")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	w, err := c.Watch(wctx, []client.Published{before, renewed, after, never, before})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	result("after")
	result("after") // refused by the results stream; would not settle twice anyway
	var got []string
	for o := range w.Outcomes() {
		got = append(got, fmt.Sprintf("%s dead=%v earlier=%v", o.Key, o.Dead, o.Earlier))
		if o.Key == "old" && o.Earlier {
			// Only now: stored sooner, the new dead letter would be the
			// subject's last message when the watch reads what was stored.
			dead("old", renewed.Sequence)
		}
		if len(got) == 4 {
			cancel() // "never" has no outcome: end the watch
		}
	}
	slices.Sort(got)
	want := []string{"after dead=false earlier=false", "before dead=false earlier=false", "old dead=true earlier=false", "old dead=true earlier=true"}
	if !slices.Equal(got, want) {
		t.Errorf("outcomes\n got %q\nwant %q", got, want)
	}
}

// A duplicate republish is acknowledged with the original's sequence, so its
// dead letter settles a plain watch; DeadLettersAfter keeps it Earlier.
func TestWatchDeadLettersAfter(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js)
	p, err := c.Publish(ctx, client.Request{Key: "k", Body: body("k")})
	if err != nil {
		t.Fatal(err)
	}
	d := client.DeadLetter{Key: "k", Request: body("k"), Reason: client.ReasonPermanentError, StreamSequence: p.Sequence,
		Error: client.Failure{Class: "permanent", Code: "InvalidParameterValue.X"}}
	if err := queue.PublishDeadLetter(ctx, js, topo, d, "k/1"); err != nil {
		t.Fatal(err)
	}
	mark, err := c.DeadLetterMark(ctx)
	if err != nil || mark == 0 {
		t.Fatalf("DeadLetterMark = %d, %v", mark, err)
	}
	collect := func(opts ...client.WatchOption) []string {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		w, err := c.Watch(wctx, []client.Published{p}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		var got []string
		for o := range w.Outcomes() {
			got = append(got, fmt.Sprintf("dead=%v earlier=%v", o.Dead, o.Earlier))
		}
		return got
	}
	if got := collect(); !slices.Equal(got, []string{"dead=true earlier=false"}) {
		t.Errorf("plain watch: %q", got)
	}
	if got := collect(client.DeadLettersAfter(mark)); !slices.Equal(got, []string{"dead=true earlier=true"}) {
		t.Errorf("DeadLettersAfter(mark): %q", got)
	}
	if got := collect(client.DeadLettersAfter(mark - 1)); !slices.Equal(got, []string{"dead=true earlier=false"}) {
		t.Errorf("DeadLettersAfter(mark-1): %q", got)
	}
}

func TestWaitResult(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js)
	p, err := c.Publish(ctx, client.Request{Key: "k1", Body: body("k1")})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		_, _ = queue.PublishResult(ctx, js, topo, client.Result{Key: "k1", RunGroupID: "rg-1"})
	}()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	o, err := c.WaitResult(wctx, p)
	if err != nil || o.Result == nil || o.Result.RunGroupID != "rg-1" {
		t.Fatalf("WaitResult = %+v, %v", o, err)
	}
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if _, err := c.WaitResult(short, client.Published{Key: "nothing", Sequence: 1}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitResult without an outcome: %v", err)
	}
}

func TestDeadLettersListAndRedrive(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js)
	for i, reason := range []client.DeadLetterReason{client.ReasonPermanentError, client.ReasonNameConflict, client.ReasonPermanentError} {
		key := fmt.Sprintf("d%d", i)
		d := client.DeadLetter{Key: key, Request: body(key), Reason: reason, Error: client.Failure{Class: "permanent", Code: "C" + fmt.Sprint(i%2)}}
		if err := queue.PublishDeadLetter(ctx, js, topo, d, key); err != nil {
			t.Fatal(err)
		}
	}
	keys := func(f client.DeadLetterFilter) []string {
		var ks []string
		for d, err := range c.DeadLetters(ctx, f) {
			if err != nil {
				t.Fatal(err)
			}
			ks = append(ks, d.Key)
		}
		return ks
	}
	if got := keys(client.DeadLetterFilter{}); !slices.Equal(got, []string{"d0", "d1", "d2"}) {
		t.Errorf("all: %v", got)
	}
	if got := keys(client.DeadLetterFilter{Reason: client.ReasonPermanentError, Code: "C0"}); !slices.Equal(got, []string{"d0", "d2"}) {
		t.Errorf("by reason and code: %v", got)
	}
	if got := keys(client.DeadLetterFilter{Key: "d1"}); !slices.Equal(got, []string{"d1"}) {
		t.Errorf("by key: %v", got)
	}
	if got := keys(client.DeadLetterFilter{Key: "none"}); len(got) != 0 {
		t.Errorf("unknown key: %v", got)
	}
	d, err := c.LatestDeadLetter(ctx, "d1")
	if err != nil || d.Reason() != client.ReasonNameConflict {
		t.Fatalf("latest of d1: %+v, %v", d, err)
	}
	if _, err := c.DeadLetterAt(ctx, 99); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("missing sequence: %v", err)
	}
	p, err := c.Redrive(ctx, d, body("d1-renamed"))
	if err != nil || p.Duplicate {
		t.Fatalf("redrive: %+v, %v", p, err)
	}
	s, _ := js.Stream(ctx, topo.RequestsStream)
	m, err := s.GetMsg(ctx, p.Sequence)
	if err != nil || m.Header.Get(client.HeaderKey) != "d1" || m.Header.Get(client.HeaderRedriveOf) != fmt.Sprint(d.Sequence) ||
		m.Header.Get(client.HeaderMsgID) == "d1" {
		t.Errorf("redriven message: %v %v", m, err)
	}
	if _, err := c.LatestDeadLetter(ctx, "d1"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("the redriven dead letter is still there: %v", err)
	}
}

// A request's message ID is its key, so publishing it again within the
// duplicate window is dropped; a redrive keeps the key but gets a fresh
// message ID, <key>/redrive/<dead letter's sequence>, so it is not dropped
// even within that window, and redriving the same dead letter again is. A
// key that is not a valid key publishes nothing.
func TestPublishDeduplicatesByKeyAndRedriveByDeadLetter(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js, client.WithTopology(topo.Topology))
	first, err := c.Publish(ctx, client.Request{Key: "k1", Body: body("k1")})
	if err != nil || first.Duplicate || first.Key != "k1" {
		t.Fatalf("first publish = %+v, %v", first, err)
	}
	again, err := c.Publish(ctx, client.Request{Key: "k1", Body: body("k1")})
	if err != nil || !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("second publish = %+v, %v; want a duplicate of sequence %d", again, err, first.Sequence)
	}
	dl := client.DeadLetter{Key: "k1", Request: body("k1"), Reason: client.ReasonRetriesExhausted, StreamSequence: first.Sequence,
		Error: client.Failure{Class: "ambiguous", Code: "InternalError"}}
	if err := queue.PublishDeadLetter(ctx, js, topo, dl, "k1/1"); err != nil {
		t.Fatal(err)
	}
	d, err := c.LatestDeadLetter(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Redrive(ctx, d, body("k1"))
	if err != nil || p.Duplicate || p.Key != "k1" || p.Sequence == first.Sequence {
		t.Fatalf("redrive within the window = %+v, %v", p, err)
	}
	s, err := js.Stream(ctx, topo.RequestsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, p.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if id := m.Header.Get(client.HeaderMsgID); id != fmt.Sprintf("k1/redrive/%d", d.Sequence) {
		t.Errorf("redrive message ID %q, want k1/redrive/%d", id, d.Sequence)
	}
	if m.Header.Get(client.HeaderKey) != "k1" || m.Header.Get(client.HeaderRedriveOf) != fmt.Sprint(d.Sequence) {
		t.Errorf("redrive headers: %v", m.Header)
	}
	// The same dead letter again: the publish is a duplicate, and the dead
	// letter, already deleted, cannot be deleted twice.
	if p2, err := c.Redrive(ctx, d, body("k1")); !errors.Is(err, client.ErrNotDeleted) || !p2.Duplicate || p2.Sequence != p.Sequence {
		t.Errorf("second redrive of dead letter %d = %+v, %v; want a duplicate and ErrNotDeleted", d.Sequence, p2, err)
	}
	var ie *client.InvalidRequestError
	if _, err := c.Publish(ctx, client.Request{Key: "has space", Body: body("x")}); !errors.As(err, &ie) || ie.Code != client.CodeInvalidKey {
		t.Errorf("a key with a space: %v, want an invalid key", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("requests stream holds %d messages, want 2 (the original and the redrive)", info.State.Msgs)
	}
}

func TestMaxKeyBytesIsTheKeysBound(t *testing.T) {
	long := strings.Repeat("k", client.MaxKeyBytes)
	if client.ValidateKey(long) != nil || client.ValidateKey(long+"k") == nil {
		t.Errorf("MaxKeyBytes = %d is not the bound ValidateKey applies", client.MaxKeyBytes)
	}
}

// A cancelled context stops a batch: nothing more is published, and what
// was acknowledged is reported as published.
func TestPublishBatchStopsWhenCancelled(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	c := client.New(js, client.WithPublishWindow(8))
	var reqs []client.Request
	for i := range 200 {
		reqs = append(reqs, client.Request{Key: fmt.Sprintf("c-%03d", i), Body: body(fmt.Sprintf("c-%03d", i))})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	acks, err := c.PublishBatch(ctx, reqs)
	var be *client.BatchError
	if !errors.As(err, &be) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled batch: %v", err)
	}
	s, _ := js.Stream(context.Background(), topo.RequestsStream)
	info, _ := s.Info(context.Background())
	if info.State.Msgs != uint64(len(acks)) || len(acks) != be.Index {
		t.Errorf("stored %d, acknowledged %d, first unacknowledged %d: a cancelled batch must publish nothing unreported", info.State.Msgs, len(acks), be.Index)
	}
}
