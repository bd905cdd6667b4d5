// Package submission is the per-request state machine of exactly-once
// submission: given what the ledger knows about a key and what just
// happened, it decides the next step. It does no I/O; internal/queue
// carries its steps out over JetStream and the Omics API.
//
// The guarantee it is built for: never a second paid run group for one
// request, never a request left without an outcome. The levers are the
// ledger entry (internal/ledger), a lookup by Name before every call that
// could duplicate an unseen run group, and the API's unique Name, which
// turns a late original into DuplicateName instead of a second run group.
package submission

import (
	"math/rand/v2"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/retry"
)

// Step is what the executor does next.
type Step int

// Steps, named as docs/design.md lists them.
const (
	// StepPublishResult: the run group exists; publish (or republish) the
	// result and ack.
	StepPublishResult Step = iota + 1
	// StepRepublishDeadLetter: this very message was dead-lettered and not
	// acked; publish the recorded dead letter again and ack.
	StepRepublishDeadLetter
	// StepDefer: another message of the key is carrying it to its outcome;
	// ack this one without effect.
	StepDefer
	// StepRefuse: the message's request differs from the one the key
	// stands for, and a run group may exist for that one; dead-letter this
	// message (identity_changed) without touching the key's state.
	StepRefuse
	// StepRedrive: a new message for a dead key; revive the entry.
	StepRedrive
	// StepRepin: the request was edited, and no call for the key can have
	// created anything; the key now stands for the new request.
	StepRepin
	// StepWait: wait Delay, then decide again.
	StepWait
	// StepLookup: look the run group up by Name.
	StepLookup
	// StepCall: call RunApplication.
	StepCall
	// StepDeadLetter: dead-letter the request for Reason.
	StepDeadLetter
	// StepGiveUp: the delivery budget is spent; record it (the entry then
	// looks up whatever may exist before the dead letter).
	StepGiveUp
)

var stepNames = map[Step]string{
	StepPublishResult: "publish_result", StepRepublishDeadLetter: "republish_dead_letter", StepDefer: "defer",
	StepRefuse: "refuse", StepRedrive: "redrive", StepRepin: "repin", StepWait: "wait", StepLookup: "lookup",
	StepCall: "call", StepDeadLetter: "dead_letter", StepGiveUp: "give_up",
}

func (s Step) String() string {
	if n, ok := stepNames[s]; ok {
		return n
	}
	return "invalid"
}

// Decision is the next step.
type Decision struct {
	Step   Step
	Delay  time.Duration           // StepWait
	Reason client.DeadLetterReason // StepDeadLetter, StepRefuse
	// Detail says why, for the dead letter and the log (never an input).
	Detail string
}

// Policy holds the state machine's settings.
type Policy struct {
	// Retry bounds retries of throttled, transient and ambiguous calls.
	Retry retry.Policy
	// Horizon is how long a created run group may take to become visible to
	// DescribeRunGroups. After a DuplicateName (or a late rejection) for a
	// key that may have created its run group, lookups that find nothing
	// are repeated until the horizon before anything is dead-lettered.
	Horizon time.Duration
	// LookupInitial and LookupMax bound the growing, jittered delays
	// between such lookups.
	LookupInitial, LookupMax time.Duration
	// MaxDeliveries bounds deliveries of one message that were not handed
	// back on purpose: crashes and losses (a crash loop).
	MaxDeliveries int
	// MaxPauseStrikes parks a request in the DLQ once its own calls have
	// paused the fleet this often outside trials (others went through
	// meanwhile). 0: never.
	MaxPauseStrikes int
	// CreateSkew is the clock difference allowed between this fleet and
	// the API when deciding whether a run group was created after the
	// request's first call.
	CreateSkew time.Duration
}

// DefaultPolicy returns the documented defaults.
func DefaultPolicy() Policy {
	return Policy{
		Retry:           retry.DefaultPolicy(),
		Horizon:         5 * time.Minute,
		LookupInitial:   time.Second,
		LookupMax:       30 * time.Second,
		MaxDeliveries:   20,
		MaxPauseStrikes: 3,
		CreateSkew:      5 * time.Minute,
	}
}

// Situation is what the executor knows besides the entry.
type Situation struct {
	Now time.Time
	// Seq is the message's stream sequence; Deliveries its delivery count.
	Seq        uint64
	Deliveries uint64
	// Identity is the identity of the message's request.
	Identity ledger.Identity
	// DriverAlive reports that the entry's Driver message is still in the
	// requests stream (consulted only when the Driver is another message).
	DriverAlive bool
}

// Admit decides what to do with a message before its handler takes the
// key's lease: the answers that need no lease (the outcome is known, or the
// message is not the one carrying the key), else StepCall meaning "take the
// lease and go on with Next".
func Admit(e *ledger.Entry, s Situation) Decision {
	switch e.State {
	case ledger.StateSubmitted:
		return Decision{Step: StepPublishResult}
	case ledger.StateDead:
		if e.DeadSequence == s.Seq {
			return Decision{Step: StepRepublishDeadLetter}
		}
		if d, refused := identityRefusal(e, s); refused {
			return d
		}
		return Decision{Step: StepRedrive}
	}
	other := e.Driver != 0 && e.Driver != s.Seq
	if d, refused := identityRefusal(e, s); refused {
		return d
	}
	if other && s.DriverAlive {
		if e.Identity != nil && !e.Identity.Same(s.Identity) {
			return Decision{Step: StepRefuse, Reason: client.ReasonDuplicateInFlight,
				Detail: "another message of this key, with a different request, is being submitted"}
		}
		return Decision{Step: StepDefer}
	}
	if e.Identity != nil && !e.Identity.Same(s.Identity) {
		return Decision{Step: StepRepin}
	}
	return Decision{Step: StepCall}
}

// identityRefusal refuses a request that differs from the key's pinned one
// when a call for the key may have created a run group: submitting the
// edit could make a second run group (a new Name) or claim the wrong one.
func identityRefusal(e *ledger.Entry, s Situation) (Decision, bool) {
	if e.Identity == nil || e.Identity.Same(s.Identity) || !e.MaybeCreated {
		return Decision{}, false
	}
	return Decision{Step: StepRefuse, Reason: client.ReasonIdentityChanged,
		Detail: "the request's " + e.Identity.Differences(s.Identity) + " differs from the one this key was first submitted with, " +
			"and a run group may exist for that one; it was not submitted"}, true
}

// Next decides the next step for a key whose lease the executor holds.
func Next(e *ledger.Entry, s Situation, p Policy) Decision {
	if e.State == ledger.StateSubmitted {
		return Decision{Step: StepPublishResult}
	}
	givingUp := p.MaxDeliveries > 0 && s.Deliveries > e.Releases+uint64(p.MaxDeliveries)
	if e.NeedsLookup {
		if wait := e.NotBefore.Sub(s.Now); wait > 0 {
			return Decision{Step: StepWait, Delay: wait}
		}
		return Decision{Step: StepLookup}
	}
	if p.MaxPauseStrikes > 0 && e.PauseStrikes >= p.MaxPauseStrikes {
		return Decision{Step: StepDeadLetter, Reason: client.ReasonPauseLimit,
			Detail: "this request's calls paused the fleet repeatedly while other requests went through; it is parked"}
	}
	if givingUp && e.Pending != ledger.PendingGivingUp {
		return Decision{Step: StepGiveUp}
	}
	if wait := e.NotBefore.Sub(s.Now); wait > 0 {
		return Decision{Step: StepWait, Delay: wait}
	}
	switch e.Pending {
	case ledger.PendingGivingUp:
		return Decision{Step: StepDeadLetter, Reason: client.ReasonMaxDeliveries,
			Detail: "the message was delivered more often than the worker's delivery budget allows (a crash loop?)"}
	case ledger.PendingDuplicate:
		if e.MaybeCreated {
			return Decision{Step: StepDeadLetter, Reason: client.ReasonReconcileExhausted,
				Detail: "the API answered DuplicateName, but no run group with this Name became visible within the visibility horizon"}
		}
		return Decision{Step: StepDeadLetter, Reason: client.ReasonNameConflict,
			Detail: "the run group name is held by a run group this request did not create"}
	case ledger.PendingPermanent:
		return Decision{Step: StepDeadLetter, Reason: client.ReasonPermanentError, Detail: "the API rejected the request"}
	case ledger.PendingExhausted:
		return Decision{Step: StepDeadLetter, Reason: client.ReasonRetriesExhausted, Detail: "retries of throttled or failed calls were used up"}
	case ledger.PendingAmbiguous:
		return Decision{Step: StepLookup} // not reached: an unknown outcome always needs a lookup
	}
	return Decision{Step: StepCall}
}

// AfterCall records a call's outcome and schedules what follows it.
func AfterCall(e *ledger.Entry, o ledger.CallOutcome, p Policy) {
	e.SettleCall(o, p.Horizon)
	if o.Systemic {
		return // the fleet pauses; waiting for it is not a retry
	}
	if o.Throttled {
		// The limiter adapts to throttling; it is retried as long as it
		// lasts, with growing delays but no budget.
		e.Throttles++
		e.NotBefore = o.At.Add(p.Retry.Delay(e.Throttles))
		return
	}
	switch o.Effect {
	case ledger.EffectNotExecuted, ledger.EffectMaybeExecuted:
		delay, ok := p.Retry.Next(e.RetryAttempts, e.RetryActive)
		if !ok {
			e.Exhaust()
			return
		}
		e.ScheduleRetry(o.At, delay)
	}
}

// LookupDelay is the wait before the next lookup while the horizon runs:
// growing with the lookups made, jittered by ±50% (rnd in [0, 1)), and never
// past the horizon, so the last lookup happens at it.
func LookupDelay(e *ledger.Entry, p Policy, now time.Time, rnd float64) time.Duration {
	d := p.LookupInitial
	for i := 1; i < e.Lookups && d < p.LookupMax; i++ {
		d *= 2
	}
	d = min(d, p.LookupMax)
	d = time.Duration(float64(d) * (0.5 + rnd))
	if left := e.HorizonUntil.Sub(now); left > 0 && d > left {
		d = left
	}
	return max(d, 50*time.Millisecond)
}

// Jitter returns a value in [0, 1) for LookupDelay.
func Jitter() float64 { return rand.Float64() }
