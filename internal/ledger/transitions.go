package ledger

import (
	"time"

	"github.com/omicsq/omicsq/client"
)

// Effect is what a settled RunApplication call means for the run group.
type Effect int

// Effects of a call, from the classified answer.
const (
	// EffectCreated: the call returned a RunGroupId.
	EffectCreated Effect = iota + 1
	// EffectNotExecuted: the API documents that nothing was done
	// (throttled, authentication, or the request never left this host).
	EffectNotExecuted
	// EffectMaybeExecuted: the outcome is unknown (InternalError, a timeout
	// or reset after sending, an unreadable answer, an undocumented
	// transient code, a call cut off by shutdown).
	EffectMaybeExecuted
	// EffectDuplicateName: a run group with this Name exists.
	EffectDuplicateName
	// EffectRejected: the request was refused for good.
	EffectRejected
)

// CallOutcome is the recorded answer of one call.
type CallOutcome struct {
	Effect     Effect
	Class      string // the error class, for the history
	Code       string
	RequestID  string
	RunGroupID string
	At         time.Time
	Worker     string
	// Systemic marks an answer that pauses the fleet rather than the
	// request (credentials, permissions, quota, outages); Strike that the
	// request itself caused the pause (it was not a trial call).
	Systemic, Strike bool
	// Throttled marks a RequestLimitExceeded answer.
	Throttled bool
}

// LiveLease reports whether a holder other than owner may act on the key at
// now, and until when: a lease, or a call that may still be open (whoever
// started it, this process included: a call cut off by a drain can still be
// executed by the server until its deadline).
func (e *Entry) LiveLease(owner string, now time.Time) (time.Time, bool) {
	var until time.Time
	if e.LeaseOwner != "" && e.LeaseOwner != owner && now.Before(e.LeaseUntil) {
		until = e.LeaseUntil
	}
	if f := e.InFlight; f != nil && now.Before(f.Deadline) && f.Deadline.After(until) {
		until = f.Deadline
	}
	return until, !until.IsZero()
}

// Acquire takes the lease for owner until until, for the message seq whose
// request has identity id. The caller has checked LiveLease. An in-flight
// call left behind by a dead or cut-off holder has an unknown outcome: from
// now on the run group may exist, and it may take horizon after that call's
// deadline to become visible.
func (e *Entry) Acquire(owner string, until time.Time, seq uint64, id Identity, horizon time.Duration) {
	if f := e.InFlight; f != nil {
		e.InFlight = nil
		e.MaybeCreated = true
		e.Pending = PendingAmbiguous
		e.extendHorizon(f.Deadline.Add(horizon))
	}
	if e.Identity == nil {
		// Pinned as soon as a message holds the key, so that a resend with
		// another request is told apart even before the first call.
		id.PinnedAt = time.Time{}
		e.Identity = &id
	}
	// A new holder looks before it calls whenever a run group may exist:
	// what an earlier holder learned may be stale.
	if e.MaybeCreated {
		e.NeedsLookup = true
	}
	e.LeaseOwner, e.LeaseUntil = owner, until
	if e.Driver != seq {
		// Deliberate hand-backs are counted per message.
		e.Driver, e.Releases = seq, 0
	}
}

// Renew extends owner's lease.
func (e *Entry) Renew(owner string, until time.Time) {
	if e.LeaseOwner == owner && until.After(e.LeaseUntil) {
		e.LeaseUntil = until
	}
}

// Release gives up owner's lease. An unsettled call keeps protecting the key
// through InFlight until its deadline.
func (e *Entry) Release(owner string) {
	if e.LeaseOwner == owner {
		e.LeaseOwner, e.LeaseUntil = "", time.Time{}
	}
}

// Pin records the identity of the request at the first intent, or replaces
// it when no call may have created anything (every earlier call was
// definitely rejected, so an edited request is a new request).
func (e *Entry) Pin(id Identity) bool {
	if e.Identity != nil && e.MaybeCreated && !e.Identity.Same(id) {
		return false
	}
	if e.Identity == nil || !e.Identity.Same(id) {
		id.PinnedAt = time.Time{} // set by the next call
		e.Identity = &id
	}
	return true
}

// BeginCall records the intent to call: from here until SettleCall the run
// group may come to exist. deadline bounds how long the call can be open;
// the lease is extended to cover it.
func (e *Entry) BeginCall(owner string, now, deadline time.Time) {
	e.Calls++
	if e.Identity != nil && e.Identity.PinnedAt.IsZero() {
		e.Identity.PinnedAt = now
	}
	e.InFlight = &InFlight{Owner: owner, Since: now, Deadline: deadline}
	e.NeedsLookup = false
	e.Lookups = 0
	e.NotBefore = time.Time{}
	if e.LeaseOwner == owner && deadline.After(e.LeaseUntil) {
		e.LeaseUntil = deadline
	}
}

// SettleCall records a call's answer. horizon is how long a created run
// group may take to become visible to lookups.
func (e *Entry) SettleCall(o CallOutcome, horizon time.Duration) {
	e.InFlight = nil
	e.Record(client.Event{At: o.At, Kind: "call", Outcome: o.Class, Code: o.Code, RequestID: o.RequestID, Worker: o.Worker})
	e.PendingCode, e.PendingRequestID = o.Code, o.RequestID
	if o.Strike {
		e.PauseStrikes++
	}
	switch o.Effect {
	case EffectCreated:
		e.markSubmitted(o.RunGroupID, o.RequestID, false, o.At)
	case EffectNotExecuted:
		e.Pending = PendingNone
	case EffectMaybeExecuted:
		e.MaybeCreated = true
		e.NeedsLookup = true
		e.Pending = PendingAmbiguous
		e.extendHorizon(o.At.Add(horizon))
	case EffectDuplicateName:
		e.NeedsLookup = true
		e.Pending = PendingDuplicate
		e.extendHorizon(o.At.Add(horizon))
	case EffectRejected:
		if e.MaybeCreated {
			// An earlier call may have created the run group (the API may
			// check other rules before the Name): look for it first.
			e.NeedsLookup = true
			e.Pending = PendingPermanent
			e.extendHorizon(o.At.Add(horizon))
		} else {
			e.Pending = PendingPermanent
		}
	}
}

// CutOff records a call interrupted on this side before any answer (a
// drain that timed out). The server may still execute it; InFlight stays,
// so the key is protected until the call's deadline, and the next holder
// then treats the outcome as unknown.
func (e *Entry) CutOff(at time.Time, worker string) {
	e.Record(client.Event{At: at, Kind: "call", Outcome: "cut_off", Worker: worker})
}

func (e *Entry) extendHorizon(t time.Time) {
	if t.After(e.HorizonUntil) {
		e.HorizonUntil = t
	}
}

// ScheduleRetry delays the next step by delay and counts a retry.
func (e *Entry) ScheduleRetry(now time.Time, delay time.Duration) {
	e.RetryAttempts++
	e.RetryActive += delay
	e.NotBefore = now.Add(delay)
}

// Exhaust records that the retry budget is spent. If a run group may exist,
// it is looked for until the horizon first.
func (e *Entry) Exhaust() {
	e.Pending = PendingExhausted
	if e.MaybeCreated {
		e.NeedsLookup = true
	}
}

// GiveUp records that the delivery budget is spent. If a run group may
// exist, it is looked for until the horizon first.
func (e *Entry) GiveUp() {
	e.Pending = PendingGivingUp
	if e.MaybeCreated {
		e.NeedsLookup = true
	}
}

// HoldUntil keeps the next step from starting before t.
func (e *Entry) HoldUntil(t time.Time) {
	if t.After(e.NotBefore) {
		e.NotBefore = t
	}
}

// LookupFound records that the lookup found this request's run group.
func (e *Entry) LookupFound(runGroupID, requestID string, at time.Time, worker string) {
	e.Record(client.Event{At: at, Kind: "lookup", Outcome: "found", RequestID: requestID, Worker: worker})
	e.markSubmitted(runGroupID, requestID, true, at)
}

// LookupConflict records that the Name is held by a run group this request
// did not create.
func (e *Entry) LookupConflict(requestID string, at time.Time, worker string) {
	e.Record(client.Event{At: at, Kind: "lookup", Outcome: "conflict", RequestID: requestID, Worker: worker})
	e.NeedsLookup = false
	e.Pending = PendingDuplicate
	e.HorizonUntil = time.Time{} // a visible holder is a definite answer
}

// LookupNotFound records a lookup that found nothing. Before the horizon,
// a pending DuplicateName or rejection is looked up again after retryIn; a
// pending unknown outcome is resolved (a resubmission with the same Name is
// safe: if the earlier call created the group, it answers DuplicateName).
func (e *Entry) LookupNotFound(requestID string, at time.Time, worker string, retryIn time.Duration) {
	e.Record(client.Event{At: at, Kind: "lookup", Outcome: "not_found", RequestID: requestID, Worker: worker})
	e.Lookups++
	e.NeedsLookup = false
	switch e.Pending {
	case PendingAmbiguous:
		e.Pending = PendingNone
	case PendingDuplicate, PendingPermanent, PendingExhausted, PendingGivingUp:
		if at.Before(e.HorizonUntil) {
			e.NeedsLookup = true
			e.NotBefore = at.Add(retryIn)
		}
	}
}

// LookupFailed records a lookup that got no answer; it is tried again after
// retryIn.
func (e *Entry) LookupFailed(class, code, requestID string, at time.Time, worker string, retryIn time.Duration) {
	e.Record(client.Event{At: at, Kind: "lookup", Outcome: class, Code: code, RequestID: requestID, Worker: worker})
	e.Lookups++ // the next delay grows
	e.NeedsLookup = true
	e.NotBefore = at.Add(retryIn)
}

func (e *Entry) markSubmitted(runGroupID, requestID string, reconciled bool, at time.Time) {
	e.State = StateSubmitted
	e.RunGroupID, e.RequestID, e.Reconciled = runGroupID, requestID, reconciled
	e.NeedsLookup, e.Pending, e.InFlight = false, PendingNone, nil
	e.LeaseOwner, e.LeaseUntil = "", time.Time{}
	e.SubmittedAt = at
}

// MarkDead records that the message seq was dead-lettered for reason.
func (e *Entry) MarkDead(seq uint64, reason, code string, at time.Time, worker string) {
	e.State = StateDead
	e.DeadSequence = seq
	e.LeaseOwner, e.LeaseUntil = "", time.Time{}
	e.Record(client.Event{At: at, Kind: "dead_letter", Outcome: reason, Code: code, Worker: worker})
}

// Redrive revives a dead request for a new message: the retry budget starts
// again, and whatever may exist is looked up before any call.
func (e *Entry) Redrive(at time.Time, worker string) {
	e.State = StatePending
	e.RetryAttempts, e.RetryActive, e.Lookups = 0, 0, 0
	e.Pending, e.NotBefore, e.HorizonUntil = PendingNone, time.Time{}, time.Time{}
	e.NeedsLookup = e.MaybeCreated
	e.Record(client.Event{At: at, Kind: "redrive", Outcome: "restarted", Worker: worker})
}

// Released counts a deliberate hand-back of the message.
func (e *Entry) Released() { e.Releases++ }
