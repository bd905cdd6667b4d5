package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// The executor driven through its seams, without a NATS server: an
// in-memory ledger and outbox, a scripted API on a fake clock that can
// create a run group and then fail, and hide new groups from lookups.

type memLedger struct {
	mu      sync.Mutex
	entries map[string][]byte
	revs    map[string]uint64
}

func (l *memLedger) Get(_ context.Context, key string) (ledger.Entry, uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.entries[key]
	if !ok {
		return ledger.Entry{Key: key, State: ledger.StatePending}, 0, nil
	}
	var e ledger.Entry
	err := json.Unmarshal(b, &e)
	return e, l.revs[key], err
}

func (l *memLedger) Put(_ context.Context, e ledger.Entry, rev uint64) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.revs[e.Key] != rev {
		return 0, ledger.ErrConflict
	}
	b, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	l.entries[e.Key] = b
	l.revs[e.Key]++
	return l.revs[e.Key], nil
}

type memOutbox struct {
	mu      sync.Mutex
	results map[string]client.Result
	dead    []client.DeadLetter
	msgIDs  map[string]bool
}

func (o *memOutbox) PublishResult(_ context.Context, r client.Result) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.results[r.Key]; ok {
		return true, nil
	}
	o.results[r.Key] = r
	return false, nil
}

func (o *memOutbox) PublishDeadLetter(_ context.Context, d client.DeadLetter, msgID string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.msgIDs[msgID] {
		o.msgIDs[msgID] = true
		o.dead = append(o.dead, d)
	}
	return nil
}

func (o *memOutbox) Queued(context.Context, uint64) (bool, error) { return false, nil }

type neverPaused struct{}

func (neverPaused) WaitResumed(ctx context.Context) error                     { return ctx.Err() }
func (neverPaused) WaitLookup(ctx context.Context) error                      { return ctx.Err() }
func (neverPaused) Pause(context.Context, pause.Reason, string) (bool, error) { return true, nil }
func (neverPaused) ObserveSuccess()                                           {}
func (neverPaused) ObserveTransportFailure(context.Context)                   {}
func (neverPaused) WaitTurn(ctx context.Context, _ string) (bool, error) {
	return false, ctx.Err()
}
func (neverPaused) EndTrial(context.Context, string, pause.Outcome) error { return nil }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// answer scripts one RunApplication call: create the group or not, and
// what to answer.
type answer struct {
	create bool
	err    *submit.Error // nil: success (with create)
}

type scriptedAPI struct {
	clk    *clock
	lag    time.Duration
	script []answer // then: create and succeed
	mu     sync.Mutex
	calls  int
	groups []submit.RunGroup
	shown  []time.Time // when each group becomes visible
}

func (a *scriptedAPI) RunApplication(_ context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ans := answer{create: true}
	if a.calls < len(a.script) {
		ans = a.script[a.calls]
	}
	a.calls++
	if !ans.create && ans.err != nil {
		// Answered before the Name is checked, as an API may validate
		// other rules first.
		return nil, ans.err
	}
	for _, g := range a.groups {
		if g.Name == req.Name {
			return nil, &submit.Error{Class: submit.ClassPermanent, Code: "InvalidParameterValue.DuplicateName", DuplicateName: true, RequestID: "r"}
		}
	}
	id := ""
	if ans.create {
		id = fmt.Sprintf("run-%d", len(a.groups)+1)
		a.add(groupOf(req, id, a.clk.Now()))
	}
	if ans.err != nil {
		return nil, ans.err
	}
	return &submit.RunApplicationResponse{RunGroupId: id, RequestId: "r"}, nil
}

func (a *scriptedAPI) add(g submit.RunGroup) {
	a.groups = append(a.groups, g)
	a.shown = append(a.shown, a.clk.Now().Add(a.lag))
}

func (a *scriptedAPI) FindRunGroupsByName(ctx context.Context, _ *string, name string, beforePage func(context.Context) error) ([]submit.RunGroup, error) {
	if err := beforePage(ctx); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []submit.RunGroup
	for i, g := range a.groups {
		if g.Name == name && !a.clk.Now().Before(a.shown[i]) {
			out = append(out, g)
		}
	}
	return out, nil
}

func groupOf(req *submit.RunApplicationRequest, id string, at time.Time) submit.RunGroup {
	g := submit.RunGroup{RunGroupId: id, Name: req.Name, ApplicationId: req.ApplicationId, EnvironmentId: req.EnvironmentId,
		AccessMode: "PRIVATE", TotalRun: 1, CreateTime: at.Format(time.RFC3339), Option: req.Option}
	if req.Description != nil {
		g.Description = *req.Description
	}
	return g
}

var (
	errInternal    = &submit.Error{Class: submit.ClassAmbiguous, Code: "InternalError", RequestID: "r"}
	errGateway     = &submit.Error{Class: submit.ClassAmbiguous, Code: "ClientError.ParseJsonError"}
	errThrottled   = &submit.Error{Class: submit.ClassThrottled, Code: "RequestLimitExceeded", RequestID: "r"}
	errUnavailable = &submit.Error{Class: submit.ClassTransient, Code: "ServiceUnavailable", RequestID: "r"}
	errNoApp       = &submit.Error{Class: submit.ClassPermanent, Code: "ResourceNotFound.ApplicationNotExist", RequestID: "r"}
)

// drive delivers one message until the processor acks it, advancing the
// fake clock by each hand-back's delay, and returns the deliveries made.
func drive(t *testing.T, p *Processor, clk *clock, body []byte, seq uint64) int {
	t.Helper()
	d := Delivery{Data: body, Header: map[string][]string{client.HeaderKey: {"key-1"}}, StreamSeq: seq, Timestamp: clk.Now()}
	for n := 1; n <= 200; n++ {
		d.NumDelivered = uint64(n)
		dec := p.Handle(context.Background(), d)
		if dec.Action == ActionAck {
			return n
		}
		clk.advance(max(dec.Delay, 100*time.Millisecond))
	}
	t.Fatal("not settled after 200 deliveries")
	return 0
}

func newMemProcessor(clk *clock, api API) (*Processor, *memLedger, *memOutbox) {
	m, _ := metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: "test"})
	led := &memLedger{entries: map[string][]byte{}, revs: map[string]uint64{}}
	out := &memOutbox{results: map[string]client.Result{}, msgIDs: map[string]bool{}}
	policy := submission.DefaultPolicy()
	policy.Horizon = time.Minute
	return &Processor{
		Ledger: led, Outbox: out, API: api, RunLimiter: noLimit{}, DescribeLimiter: noLimit{}, Pause: neverPaused{},
		Policy: policy, Limits: submit.DefaultLimits(), CallTimeout: 2 * time.Second, LeaseTTL: 3 * time.Second,
		HoldLimit: time.Nanosecond, // every wait is a hand-back: the test's clock decides
		Metrics:   m, Log: slog.New(slog.DiscardHandler), Worker: "w1", Now: clk.Now,
	}, led, out
}

func TestExecutorWithoutNATS(t *testing.T) {
	body := []byte(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S-1","InputBase64":"e30="}`)
	for _, tc := range []struct {
		name       string
		script     []answer
		lag        time.Duration
		other      bool // another request's group holds the Name
		wantResult bool
		wantDead   string
		wantGroups int
		maxCalls   int
		reconciled bool
	}{
		{name: "success", wantResult: true, wantGroups: 1, maxCalls: 1},
		{name: "InternalError without creating, then success", script: []answer{{err: errInternal}},
			wantResult: true, wantGroups: 1, maxCalls: 2},
		{name: "commit then fail, lookups lag 20 s", script: []answer{{create: true, err: errGateway}}, lag: 20 * time.Second,
			wantResult: true, wantGroups: 1, maxCalls: 2, reconciled: true},
		{name: "ServiceUnavailable after creating", script: []answer{{create: true, err: errUnavailable}},
			wantResult: true, wantGroups: 1, maxCalls: 1, reconciled: true},
		{name: "throttled three times", script: []answer{{err: errThrottled}, {err: errThrottled}, {err: errThrottled}},
			wantResult: true, wantGroups: 1, maxCalls: 4},
		{name: "rejected", script: []answer{{err: errNoApp}}, wantDead: "permanent_error", maxCalls: 1},
		{name: "rejected after an unknown outcome that created, lookups lag", lag: 10 * time.Second,
			script:     []answer{{create: true, err: errInternal}, {err: errNoApp}},
			wantResult: true, wantGroups: 1, maxCalls: 2, reconciled: true},
		{name: "the Name is another request's", other: true, wantDead: "name_conflict", wantGroups: 1, maxCalls: 1},
		{name: "commit then fail, lag beyond the horizon", script: []answer{{create: true, err: errGateway}}, lag: 10 * time.Minute,
			wantDead: "reconcile_exhausted", wantGroups: 1, maxCalls: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{now: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
			api := &scriptedAPI{clk: clk, lag: tc.lag, script: tc.script}
			if tc.other {
				desc := "another patient"
				r := &submit.RunApplicationRequest{ApplicationId: "app-1", EnvironmentId: "env-1", Name: "S-1", Description: &desc}
				api.add(groupOf(r, "run-theirs", clk.Now().Add(-time.Hour)))
			}
			p, _, out := newMemProcessor(clk, api)
			drive(t, p, clk, body, 1)
			r, got := out.results["key-1"]
			if got != tc.wantResult {
				t.Errorf("result %v (%+v), want %v", got, r, tc.wantResult)
			}
			if got && r.Reconciled != tc.reconciled {
				t.Errorf("reconciled %v, want %v", r.Reconciled, tc.reconciled)
			}
			switch {
			case tc.wantDead == "" && len(out.dead) > 0:
				t.Errorf("dead letters %+v, want none", out.dead)
			case tc.wantDead != "" && (len(out.dead) != 1 || string(out.dead[0].Reason) != tc.wantDead):
				t.Errorf("dead letters %+v, want one %s", out.dead, tc.wantDead)
			}
			if len(api.groups) != tc.wantGroups {
				t.Errorf("%d run groups, want %d", len(api.groups), tc.wantGroups)
			}
			if api.calls > tc.maxCalls {
				t.Errorf("%d RunApplication calls, want at most %d", api.calls, tc.maxCalls)
			}
		})
	}
}

// A plain redrive of a reconcile_exhausted key whose group has become
// visible publishes its result without calling; an edited one is refused.
func TestExecutorRedriveOfAMaybeCreatedKey(t *testing.T) {
	body := []byte(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S-1","InputBase64":"e30="}`)
	clk := &clock{now: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
	api := &scriptedAPI{clk: clk, lag: 10 * time.Minute, script: []answer{{create: true, err: errGateway}}}
	p, _, out := newMemProcessor(clk, api)
	drive(t, p, clk, body, 1)
	if len(out.dead) != 1 || out.dead[0].Reason != "reconcile_exhausted" {
		t.Fatalf("dead letters %+v, want reconcile_exhausted", out.dead)
	}
	clk.advance(10 * time.Minute) // the group is visible now
	calls := api.calls
	edited := []byte(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S-1-renamed","InputBase64":"e30="}`)
	drive(t, p, clk, edited, 2)
	if len(out.dead) != 2 || out.dead[1].Reason != "identity_changed" || api.calls != calls {
		t.Fatalf("edited redrive: dead letters %+v, %d calls; want identity_changed and no call", out.dead, api.calls-calls)
	}
	drive(t, p, clk, body, 3)
	if r, ok := out.results["key-1"]; !ok || r.RunGroupID != "run-1" || !r.Reconciled || api.calls != calls {
		t.Errorf("plain redrive: result %+v (%v), %d calls; want run-1 reconciled with no call", r, ok, api.calls-calls)
	}
}

// Regressions from the hostile review of the rebuilt state machine.

var reviewBody = []byte(`{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S-1","InputBase64":"e30="}`)

func t0c() *clock { return &clock{now: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)} }

// 1. Give-up path: one lagging lookup after an unknown outcome, then max_deliveries
// beside the request's own run group, well inside the horizon.
func TestExecutorGiveUpLooksUntilTheHorizon(t *testing.T) {
	clk := t0c()
	api := &scriptedAPI{clk: clk, lag: 20 * time.Second, script: []answer{{create: true, err: errGateway}}}
	p, _, out := newMemProcessor(clk, api)
	p.Policy.MaxDeliveries = 3
	d := Delivery{Data: reviewBody, Header: map[string][]string{client.HeaderKey: {"key-1"}}, StreamSeq: 1, Timestamp: clk.Now()}
	d.NumDelivered = 3
	dec := p.Handle(context.Background(), d) // calls, ambiguous, hands back (counted)
	clk.advance(max(dec.Delay, 100*time.Millisecond))
	d.NumDelivered = 6 // two crashes in between
	// Every later delivery is past the budget: the give-up path must keep
	// looking until the group is visible instead of dead-lettering.
	for n := 6; n < 200 && dec.Action != ActionAck; n++ {
		d.NumDelivered = uint64(n)
		dec = p.Handle(context.Background(), d)
		clk.advance(max(dec.Delay, 100*time.Millisecond))
	}
	if len(out.dead) != 0 || len(out.results) != 1 || !out.results["key-1"].Reconciled {
		t.Errorf("give-up path: dead %+v, results %+v; want the run group found", out.dead, out.results)
	}
}

// 2. Lookup failures share the call retry budget and dead-letter a maybe-created key
// without any successful lookup.
type throttledLookups struct {
	*scriptedAPI
	mu sync.Mutex
	n  int
}

func (a *throttledLookups) FindRunGroupsByName(ctx context.Context, pid *string, name string, bp func(context.Context) error) ([]submit.RunGroup, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n > 0 {
		a.n--
		return nil, errThrottled
	}
	return a.scriptedAPI.FindRunGroupsByName(ctx, pid, name, bp)
}

func TestExecutorFailedLookupsNeverDeadLetterAMaybeCreatedKey(t *testing.T) {
	clk := t0c()
	inner := &scriptedAPI{clk: clk, script: []answer{{create: true, err: errGateway}}}
	api := &throttledLookups{scriptedAPI: inner, n: 10}
	p, _, out := newMemProcessor(clk, api)
	drive(t, p, clk, reviewBody, 1)
	if len(out.dead) != 0 || len(out.results) != 1 {
		t.Errorf("after 10 throttled lookups: dead %+v, %d results; want the run group found", out.dead, len(out.results))
	}
}

// 3. After a client-side timeout the same handler calls again before the first
// call's recorded deadline (CallTimeout + margin).
type timedAPI struct {
	*scriptedAPI
	timeout time.Duration
	starts  []time.Time
}

func (a *timedAPI) RunApplication(ctx context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error) {
	a.starts = append(a.starts, a.clk.Now())
	if len(a.starts) == 1 {
		a.clk.advance(a.timeout) // the client gives up; the server keeps going
		return nil, &submit.Error{Class: submit.ClassAmbiguous, Code: "ClientError.NetworkError", Err: context.DeadlineExceeded}
	}
	return a.scriptedAPI.RunApplication(ctx, req)
}

func TestExecutorWaitsOutATimedOutCall(t *testing.T) {
	clk := t0c()
	api := &timedAPI{scriptedAPI: &scriptedAPI{clk: clk}, timeout: 2 * time.Second}
	p, _, _ := newMemProcessor(clk, api)
	drive(t, p, clk, reviewBody, 1)
	deadline := api.starts[0].Add(p.CallTimeout + p.callMargin())
	if len(api.starts) < 2 {
		t.Fatalf("%d calls, want a resubmission", len(api.starts))
	}
	if api.starts[1].Before(deadline) {
		t.Errorf("second RunApplication %v before the first call's deadline", deadline.Sub(api.starts[1]))
	}
}

// 4. An unknown server code (systemic, taken as "not executed") after commit:
// the resend's DuplicateName is judged as somebody else's Name.
func TestExecutorUnknownCodeIsNotProofOfNothingDone(t *testing.T) {
	clk := t0c()
	unknown := &submit.Error{Class: submit.ClassSystemic, Code: "FailedToAnswer.Unknown", RequestID: "r"}
	api := &scriptedAPI{clk: clk, script: []answer{{create: true, err: unknown}}}
	p, _, out := newMemProcessor(clk, api)
	drive(t, p, clk, reviewBody, 1)
	if len(out.dead) != 0 || len(out.results) != 1 || len(api.groups) != 1 {
		t.Errorf("dead %+v, %d results, %d groups; want the run group claimed", out.dead, len(out.results), len(api.groups))
	}
}

// 5. A shutdown that cuts a call off in its dial phase spends the last attempt.
type cancelAPI struct {
	*scriptedAPI
	cancel func()
}

func (a *cancelAPI) RunApplication(ctx context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error) {
	a.cancel()
	return nil, &submit.Error{Class: submit.ClassTransient, Code: "ClientError.NetworkError", Message: "dial: context canceled"}
}

func TestExecutorShutdownBeforeSendingSpendsNoAttempt(t *testing.T) {
	clk := t0c()
	ctx, cancel := context.WithCancel(context.Background())
	api := &cancelAPI{scriptedAPI: &scriptedAPI{clk: clk}, cancel: cancel}
	p, _, out := newMemProcessor(clk, api)
	p.Policy.Retry.MaxAttempts = 1
	d := Delivery{Data: reviewBody, Header: map[string][]string{client.HeaderKey: {"key-1"}}, StreamSeq: 1, NumDelivered: 1, Timestamp: clk.Now()}
	dec := p.Handle(ctx, d)
	if dec.Action != ActionNak || len(out.dead) > 0 {
		t.Errorf("decision %+v, dead %+v; want the message handed back", dec, out.dead)
	}
	if len(out.dead) > 0 {
		t.Errorf("shutdown dead-lettered the request: %s", out.dead[0].Reason)
	}
}

// fixedBreaker answers every Check with one trip.
type fixedBreaker struct{ trip breaker.Trip }

func (b *fixedBreaker) Failed(context.Context, breaker.Resource, string, string) (bool, error) {
	return b.trip.State == breaker.Open, nil
}

func (b *fixedBreaker) Check(context.Context, []breaker.Resource) (breaker.Trip, bool, error) {
	return b.trip, b.trip.State != "", nil
}

// A breaker release with an edit, then an unknown outcome and a
// redelivery (of the original body): the edit is kept in the ledger, so the
// redelivery is the same request, and its run group is found.
func TestExecutorBreakerEditSurvivesARedelivery(t *testing.T) {
	clk := t0c()
	api := &scriptedAPI{clk: clk, lag: 20 * time.Second, script: []answer{{create: true, err: errGateway}}}
	p, _, out := newMemProcessor(clk, api)
	p.Breaker = &fixedBreaker{trip: breaker.Trip{ID: "t1", State: breaker.Released, Code: "ResourceNotFound.ApplicationNotExist",
		Resource: breaker.Resource{Kind: breaker.KindApplication, ID: "app-1"}, Edits: map[string]string{"ApplicationId": "app-2"}}}
	p.BreakerHold, p.BreakerWindow = time.Second, time.Second
	drive(t, p, clk, reviewBody, 1)
	if len(out.dead) != 0 || len(out.results) != 1 || !out.results["key-1"].Reconciled {
		t.Fatalf("dead %+v, results %+v; want the edited request's run group found", out.dead, out.results)
	}
	if len(api.groups) != 1 || api.groups[0].ApplicationId != "app-2" {
		t.Errorf("run groups %+v, want one running the edited application", api.groups)
	}
}

// A key that may have created its run group is never dead-lettered by an
// operator's breaker decision, nor edited.
func TestExecutorBreakerDecisionsSpareAMaybeCreatedKey(t *testing.T) {
	clk := t0c()
	api := &scriptedAPI{clk: clk, lag: 20 * time.Second, script: []answer{{create: true, err: errGateway}}}
	p, _, out := newMemProcessor(clk, api)
	brk := &fixedBreaker{}
	p.Breaker, p.BreakerHold, p.BreakerWindow = brk, time.Second, time.Second
	d := Delivery{Data: reviewBody, Header: map[string][]string{client.HeaderKey: {"key-1"}}, StreamSeq: 1, NumDelivered: 1, Timestamp: clk.Now()}
	p.Handle(context.Background(), d) // the call commits, then fails: maybe created
	brk.trip = breaker.Trip{ID: "t1", State: breaker.DeadLettered, Code: "ResourceNotFound.ApplicationNotExist",
		Resource: breaker.Resource{Kind: breaker.KindApplication, ID: "app-1"}}
	drive(t, p, clk, reviewBody, 1)
	if len(out.dead) != 0 || len(out.results) != 1 {
		t.Fatalf("dead %+v, results %+v; want the run group found", out.dead, out.results)
	}
}
