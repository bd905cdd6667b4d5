package redrive_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/redrive"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

// env is an embedded JetStream server provisioned as a worker provisions
// it, with a client over it: the rules are exercised without any CLI.
type env struct {
	t    *testing.T
	ctx  context.Context
	js   jetstream.JetStream
	topo queue.Topology
	c    *client.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	topo := queue.DefaultTopology()
	if err := queue.Provision(ctx, js, topo); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return &env{t: t, ctx: ctx, js: js, topo: topo, c: client.New(js, client.WithTopology(topo.Topology))}
}

// deadLetter publishes a dead letter the way the worker does; request ""
// leaves Request out, raw is RawBase64.
func (e *env) deadLetter(key, msgID, code, request, raw string) {
	e.t.Helper()
	d := client.DeadLetter{Key: key, Reason: client.ReasonInvalidRequest, RawBase64: raw, Attempts: 1, Deliveries: 1,
		Error:    client.Failure{Class: "permanent", Code: code, Message: "rejected"},
		FailedAt: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC), Worker: "test"}
	if request != "" {
		d.Request = json.RawMessage(request)
	}
	if err := queue.PublishDeadLetter(e.ctx, e.js, e.topo, d, msgID); err != nil {
		e.t.Fatal(err)
	}
}

// pin writes key's ledger entry as the worker leaves it after a dead
// letter: request's identity pinned, maybeCreated as given.
func (e *env) pin(key, request string, maybeCreated bool) {
	e.t.Helper()
	r, err := submit.DecodeRunApplication([]byte(request), submit.DefaultLimits())
	if err != nil {
		e.t.Fatal(err)
	}
	id := submission.IdentityOf(r, time.Now())
	l, err := ledger.Open(e.ctx, e.js, e.topo.LedgerBucket)
	if err != nil {
		e.t.Fatal(err)
	}
	entry := ledger.Entry{Key: key, State: ledger.StateDead, Calls: 1, MaybeCreated: maybeCreated, Identity: &id}
	if _, err := l.Put(e.ctx, entry, 0); err != nil {
		e.t.Fatal(err)
	}
}

// msgs returns every message of stream, in order.
func (e *env) msgs(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(e.ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func (e *env) dlqSeqs() []uint64 {
	e.t.Helper()
	var seqs []uint64
	for _, m := range e.msgs(e.topo.DLQStream) {
		seqs = append(seqs, m.Sequence)
	}
	return seqs
}

func (e *env) planner(g *redrive.Guard) redrive.Planner {
	return redrive.Planner{Client: e.c, Guard: g, Limits: submit.DefaultLimits()}
}

func (e *env) guard(bucket string) *redrive.Guard {
	return redrive.OpenGuard(e.ctx, e.js, bucket, submit.DefaultLimits())
}

func (e *env) plan(g *redrive.Guard, f client.DeadLetterFilter, sets ...string) redrive.Plan {
	e.t.Helper()
	var edits []redrive.Edit
	for _, s := range sets {
		ed, err := redrive.ParseEdit(s)
		if err != nil {
			e.t.Fatalf("ParseEdit(%q): %v", s, err)
		}
		edits = append(edits, ed)
	}
	p, err := e.planner(g).Plan(e.ctx, f, edits)
	if err != nil {
		e.t.Fatalf("Plan: %v", err)
	}
	return p
}

func req(name, extra string) string {
	return `{"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K","Name":"` + name + `"` + extra + `}`
}

// step is the part of a Step a test compares.
type step struct {
	kind         redrive.Kind
	seq          uint64
	key          string
	why          string
	supersededBy uint64
	refused      bool
}

func summarize(p redrive.Plan) []step {
	var out []step
	for _, s := range p.Steps {
		out = append(out, step{s.Kind, s.Dead.Sequence, s.Dead.Key, s.Why, s.SupersededBy, s.Refused})
	}
	return out
}

func TestPlanAndExecute(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const sel, other = "Selected.Code", "Other.Code"
	e.deadLetter("k-a", "k-a/1", sel, req("k-a-v1", ""), "")                             // 1
	e.deadLetter("k-b", "k-b/1", sel, req("k-b", ""), "")                                // 2
	e.deadLetter("k-a", "k-a/2", sel, req("k-a-v2", ""), "")                             // 3
	e.deadLetter("k-b", "k-b/2", other, req("k-b", ""), "")                              // 4: newest of k-b, not selected
	e.deadLetter("k-c", "k-c/1", sel, req("k-c", ""), "")                                // 5: has a result
	e.deadLetter("k-d", "k-d/1", sel, "", "bm90IGpzb24=")                                // 6: raw
	e.deadLetter("k-e", "k-e/1", sel, req("k-e", `,"Option":{"FailureMode":"Bad"}`), "") // 7: invalid
	m := nats.NewMsg(e.topo.DLQSubject("k-f"))                                           // 8: not a dead-letter document
	m.Header.Set(client.HeaderKey, "k-f")
	m.Header.Set(client.HeaderErrorCode, sel)
	m.Data = []byte("not a dead letter")
	if _, err := e.js.PublishMsg(e.ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.PublishResult(e.ctx, e.js, e.topo, client.Result{Key: "k-c", RunGroupID: "run-c", Attempts: 1}); err != nil {
		t.Fatal(err)
	}

	requestsBefore, dlqBefore := len(e.msgs(e.topo.RequestsStream)), e.dlqSeqs()
	if requestsBefore != 0 || !slices.Equal(dlqBefore, []uint64{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("setup: %d requests, DLQ %v", requestsBefore, dlqBefore)
	}

	p := e.plan(e.guard(e.topo.LedgerBucket), client.DeadLetterFilter{Code: sel})
	want := []step{
		{kind: redrive.Redrive, seq: 3, key: "k-a"},
		{kind: redrive.DeleteSuperseded, seq: 1, key: "k-a", supersededBy: 3},
		{kind: redrive.Skip, seq: 2, key: "k-b", why: "superseded by seq 4, which the selection does not match"},
		{kind: redrive.Skip, seq: 5, key: "k-c", why: "the key already has a result (run group run-c)"},
		{kind: redrive.Skip, seq: 6, key: "k-d", why: "raw (non-JSON) dead letter: nothing to re-validate; fix and republish it by hand"},
		{kind: redrive.Skip, seq: 7, key: "k-e", why: "re-validation failed: Option.FailureMode: InvalidParameterValue.InvalidRunOption: " +
			"must be ContinueWhilePossible or NoNewCalls"},
		{kind: redrive.Skip, seq: 8, key: "k-f", why: "not a dead-letter document"},
	}
	if got := summarize(p); !slices.Equal(got, want) {
		t.Fatalf("plan\n got %+v\nwant %+v", got, want)
	}
	if p.Scanned != 8 {
		t.Errorf("Scanned = %d, want 8", p.Scanned)
	}
	rd := p.Steps[0]
	if rd.Request.Key != "k-a" || !strings.Contains(string(rd.Request.Body), `"Name":"k-a-v2"`) || rd.Unchecked != nil || rd.Err != nil {
		t.Errorf("redrive step: key %q body %s unchecked %v err %v", rd.Request.Key, rd.Request.Body, rd.Unchecked, rd.Err)
	}

	// Plan changed nothing.
	if n, dlq := len(e.msgs(e.topo.RequestsStream)), e.dlqSeqs(); n != 0 || !slices.Equal(dlq, dlqBefore) {
		t.Fatalf("Plan changed the streams: %d requests, DLQ %v", n, dlq)
	}

	for _, s := range p.Steps {
		if err := redrive.Execute(e.ctx, e.c, s); err != nil {
			t.Fatalf("Execute seq %d: %v", s.Dead.Sequence, err)
		}
	}
	reqs := e.msgs(e.topo.RequestsStream)
	if len(reqs) != 1 {
		t.Fatalf("%d requests published, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Header.Get(client.HeaderRedriveOf) != "3" || r.Header.Get(client.HeaderKey) != "k-a" ||
		r.Header.Get(client.HeaderMsgID) != "k-a/redrive/3" || string(r.Data) != string(rd.Request.Body) {
		t.Errorf("published request: header %v body %s", r.Header, r.Data)
	}
	if got := e.dlqSeqs(); !slices.Equal(got, []uint64{2, 4, 5, 6, 7, 8}) {
		t.Errorf("DLQ after Execute holds %v, want [2 4 5 6 7 8]", got)
	}

	// Planned again, only skips are left and k-a is gone.
	p = e.plan(e.guard(e.topo.LedgerBucket), client.DeadLetterFilter{Code: sel})
	for _, s := range p.Steps {
		if s.Kind != redrive.Skip || s.Dead.Key == "k-a" {
			t.Errorf("second plan: %+v", step{s.Kind, s.Dead.Sequence, s.Dead.Key, s.Why, s.SupersededBy, s.Refused})
		}
	}
}

func TestPlanKeyFilter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.deadLetter("f-a", "f-a/1", "C", req("f-a", ""), "")
	e.deadLetter("f-b", "f-b/1", "C", req("f-b", ""), "")
	e.deadLetter("f-a", "f-a/2", "C", req("f-a", ""), "")
	p := e.plan(e.guard(e.topo.LedgerBucket), client.DeadLetterFilter{Key: "f-a"})
	want := []step{
		{kind: redrive.Redrive, seq: 3, key: "f-a"},
		{kind: redrive.DeleteSuperseded, seq: 1, key: "f-a", supersededBy: 3},
	}
	if got := summarize(p); !slices.Equal(got, want) || p.Scanned != 2 {
		t.Errorf("plan (scanned %d)\n got %+v\nwant %+v", p.Scanned, got, want)
	}
	if p := e.plan(e.guard(e.topo.LedgerBucket), client.DeadLetterFilter{Key: "f-none"}); len(p.Steps) != 0 || p.Scanned != 0 {
		t.Errorf("plan of a key without dead letters: %+v", p)
	}
}

func TestGuard(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reqA := req("g-a", `,"ProjectId":"prj-1"`)
	e.deadLetter("g-a", "g-a/1", "InternalError", reqA, "") // 1: maybe created, identity of reqA
	e.pin("g-a", reqA, true)
	reqB := req("g-b", "")
	e.deadLetter("g-b", "g-b/1", "InternalError", reqB, "") // 2: every call rejected: edits allowed
	e.pin("g-b", reqB, false)
	e.deadLetter("g-c", "g-c/1", "InternalError", req("g-c", ""), "") // 3: no ledger entry
	// 4: an identity_changed dead letter: the key's first request was another.
	e.deadLetter("g-e", "g-e/1", "", req("g-e-second", ""), "")
	e.pin("g-e", req("g-e-first", ""), true)

	g := e.guard(e.topo.LedgerBucket)
	if g.OpenErr() != nil {
		t.Fatalf("OpenErr = %v", g.OpenErr())
	}
	only := func(t *testing.T, p redrive.Plan, kind redrive.Kind, seq uint64) redrive.Step {
		t.Helper()
		if len(p.Steps) != 1 || p.Steps[0].Kind != kind || p.Steps[0].Dead.Sequence != seq {
			t.Fatalf("plan = %+v, want one step %v of seq %d", summarize(p), kind, seq)
		}
		return p.Steps[0]
	}
	requests := func() int { return len(e.msgs(e.topo.RequestsStream)) }

	t.Run("edited Name refused", func(t *testing.T) {
		s := only(t, e.plan(g, client.DeadLetterFilter{Key: "g-a"}, "Name=other"), redrive.Skip, 1)
		want := redrive.RefusalHead + "an edited Name would not be the same request and could create a second run group. " +
			"Redrive it without --set, which looks the run group up first."
		if !s.Refused || s.Why != want {
			t.Errorf("refused %v, why %q", s.Refused, s.Why)
		}
	})
	t.Run("edited ProjectId and other field refused", func(t *testing.T) {
		for set, what := range map[string]string{"ProjectId=prj-x": "ProjectId", `Description="changed"`: "request"} {
			s := only(t, e.plan(g, client.DeadLetterFilter{Key: "g-a"}, set), redrive.Skip, 1)
			if !s.Refused || !strings.HasPrefix(s.Why, redrive.RefusalHead+"an edited "+what+" would not") {
				t.Errorf("%s: refused %v, why %q", set, s.Refused, s.Why)
			}
		}
	})
	t.Run("unedited identical body passes", func(t *testing.T) {
		s := only(t, e.plan(g, client.DeadLetterFilter{Key: "g-a"}), redrive.Redrive, 1)
		if s.Refused || s.Unchecked != nil {
			t.Errorf("refused %v, unchecked %v", s.Refused, s.Unchecked)
		}
		if refusal, unchecked := g.Check(e.ctx, "g-a", s.Request.Body, false); refusal != "" || unchecked != nil {
			t.Errorf("Check = %q, %v", refusal, unchecked)
		}
		// An edit that leaves the request as first submitted passes too.
		s = only(t, e.plan(g, client.DeadLetterFilter{Key: "g-a"}, "Name=g-a"), redrive.Redrive, 1)
		if s.Refused || s.Unchecked != nil {
			t.Errorf("no-op edit: refused %v, unchecked %v", s.Refused, s.Unchecked)
		}
	})
	t.Run("edits allowed when nothing may have been created", func(t *testing.T) {
		s := only(t, e.plan(g, client.DeadLetterFilter{Key: "g-b"}, "Name=renamed"), redrive.Redrive, 2)
		if !strings.Contains(string(s.Request.Body), `"Name":"renamed"`) {
			t.Errorf("body %s", s.Request.Body)
		}
		only(t, e.plan(g, client.DeadLetterFilter{Key: "g-c"}, `Description="fixed"`), redrive.Redrive, 3)
	})
	t.Run("unedited dead letter of another request refused", func(t *testing.T) {
		s := only(t, e.plan(g, client.DeadLetterFilter{Key: "g-e"}), redrive.Skip, 4)
		if !s.Refused || !strings.HasPrefix(s.Why, redrive.RefusalHead+"this dead letter's Name differs") {
			t.Errorf("refused %v, why %q", s.Refused, s.Why)
		}
	})
	t.Run("Check directly", func(t *testing.T) {
		other, err := client.NewRequest([]byte(req("other", `,"ProjectId":"prj-1"`)), "g-a", 0)
		if err != nil {
			t.Fatal(err)
		}
		if refusal, _ := g.Check(e.ctx, "g-a", other.Body, true); !strings.HasPrefix(refusal, redrive.RefusalHead+"an edited Name") {
			t.Errorf("edited: %q", refusal)
		}
		if refusal, _ := g.Check(e.ctx, "g-a", other.Body, false); !strings.HasPrefix(refusal, redrive.RefusalHead+"this dead letter's Name") {
			t.Errorf("unedited: %q", refusal)
		}
		if refusal, _ := g.Check(e.ctx, "g-a", []byte("not json"), false); !strings.HasPrefix(refusal, "refused: ") {
			t.Errorf("undecodable: %q", refusal)
		}
	})
	t.Run("unbindable ledger", func(t *testing.T) {
		ng := e.guard("NO_SUCH_LEDGER")
		if ng.OpenErr() == nil {
			t.Fatal("OpenErr = nil for a missing bucket")
		}
		s := only(t, e.plan(ng, client.DeadLetterFilter{Key: "g-c"}, `Description="fixed"`), redrive.Skip, 3)
		if !s.Refused || !strings.HasPrefix(s.Why, "refused: the ledger (bucket NO_SUCH_LEDGER) could not be read") {
			t.Errorf("edited: refused %v, why %q", s.Refused, s.Why)
		}
		s = only(t, e.plan(ng, client.DeadLetterFilter{Key: "g-c"}), redrive.Redrive, 3)
		if s.Refused || s.Unchecked == nil || !errors.Is(s.Unchecked, ng.OpenErr()) {
			t.Errorf("unedited: refused %v, unchecked %v", s.Refused, s.Unchecked)
		}
		// Unchecked, even where the ledger would have refused it.
		s = only(t, e.plan(ng, client.DeadLetterFilter{Key: "g-e"}), redrive.Redrive, 4)
		if s.Unchecked == nil {
			t.Error("g-e: Unchecked not set")
		}
	})

	if n, dlq := requests(), e.dlqSeqs(); n != 0 || !slices.Equal(dlq, []uint64{1, 2, 3, 4}) {
		t.Errorf("planning changed the streams: %d requests, DLQ %v", n, dlq)
	}
}
