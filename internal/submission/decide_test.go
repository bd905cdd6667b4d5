package submission

import (
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/submit"
)

var t0 = time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)

func req(name string) *submit.RunApplicationRequest {
	in := "eyJ3Zi5zYW1wbGUiOiJTLTEifQ==" // {"wf.sample":"S-1"}
	return &submit.RunApplicationRequest{ApplicationId: "app-1", EnvironmentId: "env-1", Name: name, InputBase64: &in}
}

func identity(name string) ledger.Identity { return IdentityOf(req(name), t0) }

func TestAdmit(t *testing.T) {
	id := identity("S-1")
	edited := identity("S-1-edited")
	pinned := func(e ledger.Entry) ledger.Entry { e.Identity = &id; return e }
	for _, tc := range []struct {
		name  string
		entry ledger.Entry
		sit   Situation
		want  Step
		why   client.DeadLetterReason
	}{
		{"new key", ledger.Entry{State: ledger.StatePending}, Situation{Seq: 1, Identity: id}, StepCall, ""},
		{"submitted", ledger.Entry{State: ledger.StateSubmitted, RunGroupID: "run-1"}, Situation{Seq: 2, Identity: edited}, StepPublishResult, ""},
		{"own dead letter not acked", ledger.Entry{State: ledger.StateDead, DeadSequence: 7}, Situation{Seq: 7, Identity: id}, StepRepublishDeadLetter, ""},
		{"plain redrive", pinned(ledger.Entry{State: ledger.StateDead, DeadSequence: 7, MaybeCreated: true}), Situation{Seq: 9, Identity: id}, StepRedrive, ""},
		// Scenario 2 of issue 11: an edited Name on a key that may have
		// created its run group is refused, not submitted.
		{"redrive with a new Name, maybe created", pinned(ledger.Entry{State: ledger.StateDead, DeadSequence: 7, MaybeCreated: true}),
			Situation{Seq: 9, Identity: edited}, StepRefuse, client.ReasonIdentityChanged},
		{"redrive with a new Name, every call rejected", pinned(ledger.Entry{State: ledger.StateDead, DeadSequence: 7}),
			Situation{Seq: 9, Identity: edited}, StepRedrive, ""},
		{"resend with another body, maybe created", pinned(ledger.Entry{State: ledger.StatePending, MaybeCreated: true, Driver: 3}),
			Situation{Seq: 9, Identity: edited}, StepRefuse, client.ReasonIdentityChanged},
		{"resend, driver still in the stream", pinned(ledger.Entry{State: ledger.StatePending, Driver: 3}),
			Situation{Seq: 9, Identity: id, DriverAlive: true}, StepDefer, ""},
		{"resend with another body, driver in the stream", pinned(ledger.Entry{State: ledger.StatePending, Driver: 3}),
			Situation{Seq: 9, Identity: edited, DriverAlive: true}, StepRefuse, client.ReasonDuplicateInFlight},
		{"resend, driver gone", pinned(ledger.Entry{State: ledger.StatePending, Driver: 3}), Situation{Seq: 9, Identity: id}, StepCall, ""},
		{"edit after definite rejections, driver gone", pinned(ledger.Entry{State: ledger.StatePending, Driver: 3}),
			Situation{Seq: 9, Identity: edited}, StepRepin, ""},
		{"redelivery of the driver", pinned(ledger.Entry{State: ledger.StatePending, Driver: 3, MaybeCreated: true}),
			Situation{Seq: 3, Identity: id}, StepCall, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Admit(&tc.entry, tc.sit)
			if got.Step != tc.want || got.Reason != tc.why {
				t.Errorf("Admit = %s/%s, want %s/%s", got.Step, got.Reason, tc.want, tc.why)
			}
		})
	}
}

func TestNext(t *testing.T) {
	p := DefaultPolicy()
	p.MaxDeliveries = 5
	now := t0.Add(time.Minute)
	sit := Situation{Now: now, Seq: 1, Deliveries: 1}
	for _, tc := range []struct {
		name  string
		entry ledger.Entry
		sit   Situation
		want  Step
		why   client.DeadLetterReason
		delay time.Duration
	}{
		{"fresh", ledger.Entry{}, sit, StepCall, "", 0},
		{"backing off", ledger.Entry{NotBefore: now.Add(3 * time.Second)}, sit, StepWait, "", 3 * time.Second},
		{"lookup due", ledger.Entry{NeedsLookup: true, MaybeCreated: true}, sit, StepLookup, "", 0},
		{"lookup later", ledger.Entry{NeedsLookup: true, NotBefore: now.Add(time.Second)}, sit, StepWait, "", time.Second},
		{"duplicate past the horizon, maybe ours", ledger.Entry{Pending: ledger.PendingDuplicate, MaybeCreated: true}, sit, StepDeadLetter, client.ReasonReconcileExhausted, 0},
		{"duplicate, never maybe created", ledger.Entry{Pending: ledger.PendingDuplicate}, sit, StepDeadLetter, client.ReasonNameConflict, 0},
		{"rejected", ledger.Entry{Pending: ledger.PendingPermanent}, sit, StepDeadLetter, client.ReasonPermanentError, 0},
		{"exhausted", ledger.Entry{Pending: ledger.PendingExhausted}, sit, StepDeadLetter, client.ReasonRetriesExhausted, 0},
		// Giving up still looks first: a run group that may exist is
		// reported, not dead-lettered beside.
		{"over the delivery budget, lookup pending", ledger.Entry{NeedsLookup: true, MaybeCreated: true}, Situation{Now: now, Deliveries: 6}, StepLookup, "", 0},
		{"over the delivery budget", ledger.Entry{MaybeCreated: true}, Situation{Now: now, Deliveries: 6}, StepGiveUp, "", 0},
		{"given up, nothing left to look for", ledger.Entry{MaybeCreated: true, Pending: ledger.PendingGivingUp}, Situation{Now: now, Deliveries: 7}, StepDeadLetter, client.ReasonMaxDeliveries, 0},
		{"deliveries handed back on purpose do not count", ledger.Entry{Releases: 4}, Situation{Now: now, Deliveries: 6}, StepCall, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Next(&tc.entry, tc.sit, p)
			if got.Step != tc.want || got.Reason != tc.why || got.Delay != tc.delay {
				t.Errorf("Next = %s/%s/%v, want %s/%s/%v", got.Step, got.Reason, got.Delay, tc.want, tc.why, tc.delay)
			}
		})
	}
}

// run plays a sequence of outcomes through the state machine the way the
// executor does and returns the steps taken.
type sim struct {
	t   *testing.T
	p   Policy
	e   ledger.Entry
	now time.Time
}

func (s *sim) next() Decision {
	d := Next(&s.e, Situation{Now: s.now, Seq: 1, Deliveries: 1}, s.p)
	if d.Step == StepWait {
		s.now = s.now.Add(d.Delay)
		return s.next()
	}
	return d
}

func (s *sim) expect(step Step) {
	s.t.Helper()
	if d := s.next(); d.Step != step {
		s.t.Fatalf("at %v: step %s (%s), want %s; entry %+v", s.now.Sub(t0), d.Step, d.Reason, step, s.e)
	}
}

func (s *sim) call(effect ledger.Effect) {
	s.t.Helper()
	s.expect(StepCall)
	s.e.BeginCall("h", s.now, s.now.Add(time.Minute))
	AfterCall(&s.e, ledger.CallOutcome{Effect: effect, At: s.now, RunGroupID: "run-1"}, s.p)
}

func (s *sim) lookupNotFound() {
	s.t.Helper()
	s.expect(StepLookup)
	s.e.LookupNotFound("", s.now, "w", LookupDelay(&s.e, s.p, s.now, 0.5))
}

// Scenario 1 of issue 11: lookups lag creation. An unknown outcome, a
// lookup that finds nothing, a resubmission answered DuplicateName: the
// state machine keeps looking until the horizon instead of dead-lettering
// after a few fast cycles.
func TestLookupLagIsWaitedOutToTheHorizon(t *testing.T) {
	p := DefaultPolicy()
	s := &sim{t: t, p: p, now: t0}
	s.call(ledger.EffectMaybeExecuted)
	s.lookupNotFound()
	s.call(ledger.EffectDuplicateName)
	lookups := 0
	for s.next().Step == StepLookup {
		if s.now.After(t0.Add(p.Horizon + time.Minute)) {
			t.Fatal("still looking long past the horizon")
		}
		s.e.LookupNotFound("", s.now, "w", LookupDelay(&s.e, p, s.now, 0.5))
		lookups++
	}
	if d := s.next(); d.Step != StepDeadLetter || d.Reason != client.ReasonReconcileExhausted {
		t.Fatalf("after the horizon: %s/%s, want a reconcile_exhausted dead letter", d.Step, d.Reason)
	}
	if s.now.Before(t0.Add(p.Horizon)) {
		t.Errorf("gave up at %v, before the horizon %v", s.now.Sub(t0), p.Horizon)
	}
	// Growing delays: a handful of lookups over five minutes, not hundreds.
	if lookups < 5 || lookups > 30 {
		t.Errorf("%d lookups until the horizon, want between 5 and 30", lookups)
	}
}

// Once the group becomes visible inside the horizon, it is found.
func TestLateVisibleGroupIsFound(t *testing.T) {
	s := &sim{t: t, p: DefaultPolicy(), now: t0}
	s.call(ledger.EffectMaybeExecuted)
	s.lookupNotFound()
	s.call(ledger.EffectDuplicateName)
	s.lookupNotFound()
	s.lookupNotFound()
	s.expect(StepLookup)
	s.e.LookupFound("run-1", "", s.now, "w")
	s.expect(StepPublishResult)
	if !s.e.Reconciled || s.e.RunGroupID != "run-1" || s.e.Calls != 2 {
		t.Errorf("entry %+v", s.e)
	}
}

// A rejection that follows an unknown outcome is not proof that nothing
// exists: the earlier call may have created the group.
func TestRejectionAfterUnknownOutcomeLooksFirst(t *testing.T) {
	s := &sim{t: t, p: DefaultPolicy(), now: t0}
	s.call(ledger.EffectMaybeExecuted)
	s.lookupNotFound()
	s.call(ledger.EffectRejected)
	s.expect(StepLookup)
	// Rejected with nothing possibly created: dead-lettered at once.
	s2 := &sim{t: t, p: DefaultPolicy(), now: t0}
	s2.call(ledger.EffectRejected)
	if d := s2.next(); d.Step != StepDeadLetter || d.Reason != client.ReasonPermanentError {
		t.Errorf("%s/%s, want permanent_error", d.Step, d.Reason)
	}
}

// Scenario 6 of issue 11 (with the executor's effectOf): an outcome that
// is not a documented "nothing done" makes the key maybe-created, so the
// next call is preceded by a lookup.
func TestMaybeExecutedAlwaysLooksBeforeTheNextCall(t *testing.T) {
	s := &sim{t: t, p: DefaultPolicy(), now: t0}
	s.call(ledger.EffectNotExecuted)
	s.call(ledger.EffectMaybeExecuted) // no lookup before: nothing could exist
	if !s.e.MaybeCreated {
		t.Fatal("not maybe-created after an unknown outcome")
	}
	s.lookupNotFound()
	s.call(ledger.EffectNotExecuted) // throttled
	// A new holder (redelivery, restart) must look again before calling.
	s.e.Acquire("h2", s.now.Add(time.Minute), 1, identity("S-1"), s.p.Horizon)
	s.expect(StepLookup)
}

// Scenario 8 of issue 11: the retry budget counts active retrying, not
// time paused or queued. A request that waited an hour in a pause still has
// its budget.
func TestRetryBudgetCountsActiveTime(t *testing.T) {
	p := DefaultPolicy()
	s := &sim{t: t, p: p, now: t0}
	s.call(ledger.EffectNotExecuted)
	s.now = s.now.Add(time.Hour) // a fleet pause
	s.call(ledger.EffectNotExecuted)
	if s.e.Pending == ledger.PendingExhausted {
		t.Fatal("exhausted after a pause")
	}
	if s.e.RetryActive > time.Minute {
		t.Errorf("active retry time %v after two short backoffs", s.e.RetryActive)
	}
	// And the budget does end.
	for range p.Retry.MaxAttempts + 1 {
		if s.next().Step != StepCall {
			break
		}
		s.call(ledger.EffectNotExecuted)
	}
	if d := s.next(); d.Step != StepDeadLetter || d.Reason != client.ReasonRetriesExhausted {
		t.Errorf("after %d throttles: %s/%s, want retries_exhausted", s.e.RetryAttempts, d.Step, d.Reason)
	}
}

// Scenario 5 and 7 of issue 11, at the ledger: a call of this very process
// that was cut off is a live lease until its deadline, and a lease holder in
// backoff (no call open) is protected too.
func TestLiveLeases(t *testing.T) {
	e := ledger.Entry{}
	e.Acquire("p/1", t0.Add(15*time.Second), 1, identity("S-1"), time.Minute)
	if e.Identity == nil || !e.Identity.PinnedAt.IsZero() {
		t.Errorf("identity after taking the key: %+v, want pinned without a first-call time", e.Identity)
	}
	if _, live := e.LiveLease("p/2", t0); !live {
		t.Error("a holder's lease (no call open) is not live for another handler")
	}
	e.BeginCall("p/1", t0, t0.Add(40*time.Second))
	if !e.Identity.PinnedAt.Equal(t0) {
		t.Errorf("first call at %v did not pin its time (%v)", t0, e.Identity.PinnedAt)
	}
	e.CutOff(t0.Add(time.Second), "w")
	e.Release("p/1")
	until, live := e.LiveLease("p/3", t0.Add(20*time.Second))
	if !live || !until.Equal(t0.Add(40*time.Second)) {
		t.Errorf("cut-off call: live %v until %v, want live until its deadline", live, until)
	}
	if _, live := e.LiveLease("p/3", t0.Add(41*time.Second)); live {
		t.Error("still live after the call's deadline")
	}
	e.Acquire("p/3", t0.Add(time.Minute), 1, identity("S-1"), time.Minute)
	if !e.MaybeCreated || !e.NeedsLookup || e.InFlight != nil {
		t.Errorf("after taking over a cut-off call: %+v, want maybe-created, lookup first", e)
	}
	if want := t0.Add(40*time.Second + time.Minute); !e.HorizonUntil.Equal(want) {
		t.Errorf("horizon %v after taking over a cut-off call, want the call's deadline plus the horizon (%v)", e.HorizonUntil, want)
	}
}

func TestLookupDelayGrowsAndStopsAtTheHorizon(t *testing.T) {
	p := DefaultPolicy()
	e := ledger.Entry{HorizonUntil: t0.Add(p.Horizon)}
	var last time.Duration
	for i := 1; i <= 4; i++ {
		e.Lookups = i
		d := LookupDelay(&e, p, t0, 0.5)
		if d <= last {
			t.Errorf("lookup %d: delay %v not above %v", i, d, last)
		}
		last = d
	}
	e.Lookups = 20
	if d := LookupDelay(&e, p, t0, 0.99); d > p.LookupMax*3/2 {
		t.Errorf("delay %v beyond the cap", d)
	}
	if d := LookupDelay(&e, p, t0.Add(p.Horizon-2*time.Second), 0.99); d > 2*time.Second {
		t.Errorf("delay %v runs past the horizon", d)
	}
}

// Throttling is retried as long as it lasts (the limiter adapts): no count
// or time budget, only growing delays.
func TestThrottlingHasNoBudget(t *testing.T) {
	p := DefaultPolicy()
	s := &sim{t: t, p: p, now: t0}
	for range 3 * p.Retry.MaxAttempts {
		s.expect(StepCall)
		s.e.BeginCall("h", s.now, s.now.Add(time.Minute))
		AfterCall(&s.e, ledger.CallOutcome{Effect: ledger.EffectNotExecuted, Throttled: true, At: s.now}, p)
	}
	if s.e.Pending == ledger.PendingExhausted || s.e.RetryAttempts != 0 {
		t.Fatalf("after %d throttles: pending %q, retry attempts %d", s.e.Throttles, s.e.Pending, s.e.RetryAttempts)
	}
	s.expect(StepCall)
}

// A request whose own calls keep pausing the fleet (outside trials, while
// others go through) is parked; pauses caused by a trial call do not count.
func TestPauseStrikesParkTheRequest(t *testing.T) {
	p := DefaultPolicy()
	s := &sim{t: t, p: p, now: t0}
	for i := range p.MaxPauseStrikes + 2 {
		s.expect(StepCall)
		s.e.BeginCall("h", s.now, s.now.Add(time.Minute))
		AfterCall(&s.e, ledger.CallOutcome{Effect: ledger.EffectNotExecuted, Systemic: true, Strike: i%2 == 0, At: s.now}, p)
	}
	if d := s.next(); d.Step != StepDeadLetter || d.Reason != client.ReasonPauseLimit {
		t.Fatalf("after %d strikes: %s/%s, want pause_limit", s.e.PauseStrikes, d.Step, d.Reason)
	}
	if s.e.PauseStrikes != p.MaxPauseStrikes {
		t.Errorf("%d strikes counted, want %d (trial failures do not count)", s.e.PauseStrikes, p.MaxPauseStrikes)
	}
}
