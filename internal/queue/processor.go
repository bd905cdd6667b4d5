package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// API is the part of the Omics client the processor uses.
type API interface {
	RunApplication(ctx context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error)
	FindRunGroupsByName(ctx context.Context, projectID *string, name string, beforePage func(context.Context) error) ([]submit.RunGroup, error)
}

// Limiter paces calls to one API action.
type Limiter interface {
	// Wait blocks until one call may be sent and reports how long it waited.
	Wait(ctx context.Context) (time.Duration, error)
	// Throttled reports that the API answered RequestLimitExceeded.
	Throttled(ctx context.Context)
}

// Delivery is one delivered request message.
type Delivery struct {
	Data         []byte
	Header       nats.Header
	StreamSeq    uint64
	NumDelivered uint64
	// Timestamp is when JetStream stored the message (the enqueue time).
	Timestamp time.Time
}

// Action is what the consume loop does with a message.
type Action int

// Actions.
const (
	// ActionAck removes the message: it ended as a result or a dead letter.
	ActionAck Action = iota
	// ActionNak hands the message back for redelivery after Delay.
	ActionNak
)

// Decision is the processor's verdict on one message.
type Decision struct {
	Action  Action
	Delay   time.Duration
	Outcome submission.Outcome
}

// Failure classes of dead letters no API answer classified (those of API
// answers are submit.Class names; invalid requests have
// client.FailureClassInvalid).
const (
	classRefused       = "refused"        // the key stands for another request
	classUnknown       = "unknown"        // no call or lookup recorded a class
	classMaxDeliveries = "max_deliveries" // a crash loop, not an API answer
	classCancelled     = "cancelled"      // the request's batch was cancelled
)

// summary is what the per-message log line reports.
type summary struct {
	key, runGroupID, requestID string
	calls                      int
	reconciled                 bool
}

// Processor carries out the submission state machine (internal/submission)
// for one request message at a time: it turns each message into exactly one
// effect, a run group (published as a result) or a dead letter. It is safe
// for concurrent use.
type Processor struct {
	Ledger LedgerStore
	Outbox Outbox
	API    API
	// RunLimiter paces RunApplication, DescribeLimiter DescribeRunGroups:
	// each action has its own quota, and every lookup page takes a token.
	RunLimiter      Limiter
	DescribeLimiter Limiter
	Pause           Pauser
	Policy          submission.Policy
	Limits          submit.Limits
	// CallTimeout is the API client's per-call timeout: a call started is
	// protected in the ledger until it plus a margin has passed.
	CallTimeout time.Duration
	// LeaseTTL is how long a handler's hold on a key lasts without renewal
	// (renewed every third of it). A crashed worker's keys are free again
	// after it. Default 15s.
	LeaseTTL time.Duration
	// Breaker holds requests whose resource many requests were rejected
	// for (nil: off); BreakerWindow is how long a rejection waits for it to
	// open before the dead letter, BreakerHold how often a held request is
	// looked at again.
	Breaker       Breaker
	BreakerWindow time.Duration
	BreakerHold   time.Duration
	// HoldLimit is the longest wait a handler sits through holding the
	// message; longer waits hand the message back with that delay, so a
	// slot is not held idle. Default 2s.
	HoldLimit time.Duration
	// Batches refuses the requests of cancelled batches before any call
	// and records dead letters in their batches' members (nil: off).
	Batches BatchGate
	Metrics *metrics.Metrics
	Log     *slog.Logger
	Worker  string
	Now     func() time.Time

	runOnce    sync.Once
	runOwner   string // Worker plus a random per-process nonce
	handlerSeq sync.Mutex
	handlers   uint64
	inFlight   sync.Map // keys being handled in this process
}

// leaseOwner names one handler of this process run: a restarted worker with
// the same name, or a second handler in this process, is a different owner
// and must wait out the lease like anyone else.
func (p *Processor) leaseOwner() string {
	p.runOnce.Do(func() {
		var b [6]byte
		_, _ = rand.Read(b[:])
		p.runOwner = p.Worker + "/" + hex.EncodeToString(b[:])
	})
	p.handlerSeq.Lock()
	defer p.handlerSeq.Unlock()
	p.handlers++
	return fmt.Sprintf("%s/%d", p.runOwner, p.handlers)
}

func (p *Processor) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Processor) leaseTTL() time.Duration {
	if p.LeaseTTL > 0 {
		return p.LeaseTTL
	}
	return 15 * time.Second
}

func (p *Processor) holdLimit() time.Duration {
	if p.HoldLimit > 0 {
		return p.HoldLimit
	}
	return 2 * time.Second
}

// callMargin is added to the call timeout for the protection of a call
// started: the server may finish a moment after the client gave up.
func (p *Processor) callMargin() time.Duration {
	return min(10*time.Second, max(time.Second, p.CallTimeout/2))
}

// Handle processes one delivery and returns what to do with the message.
// ctx ending (shutdown) releases the message rather than failing it.
func (p *Processor) Handle(ctx context.Context, d Delivery) Decision {
	start := p.now()
	var sum summary
	dec := p.handle(ctx, d, &sum)
	elapsed := p.now().Sub(start)
	p.Metrics.MessageProcessed(dec.Outcome, elapsed)
	// One line per message: identifiers and outcome only, never inputs.
	p.Log.Info("message processed", "key", sum.key, "seq", d.StreamSeq, "delivery", d.NumDelivered,
		"outcome", dec.Outcome, "attempts", sum.calls, "run_group_id", sum.runGroupID,
		"request_id", sum.requestID, "reconciled", sum.reconciled, "duration", elapsed)
	return dec
}

// job is one request being processed.
type job struct {
	d     Delivery
	key   string
	req   *submit.RunApplicationRequest
	id    ledger.Identity
	entry ledger.Entry // the entry as read before the lease; see hold for after
	hold  *hold
	log   *slog.Logger
}

// batch is the request's batch ID (HeaderBatch); "" when it has none or
// an unusable one (which is ignored rather than copied anywhere).
func (j *job) batch() string {
	b := j.d.Header.Get(client.HeaderBatch)
	if b == "" || client.ValidateBatch(b) != nil {
		return ""
	}
	return b
}

// current returns the freshest entry this handler knows.
func (j *job) current() ledger.Entry {
	if j.hold != nil {
		return j.hold.snapshot()
	}
	return j.entry
}

func (p *Processor) handle(ctx context.Context, d Delivery, sum *summary) Decision {
	req, verr := submit.DecodeRunApplication(d.Data, p.Limits)
	key, kerr := requestKey(d.Header, req, d.Data)
	j := &job{d: d, key: key, req: req, log: p.Log.With("key", key, "seq", d.StreamSeq, "delivery", d.NumDelivered)}
	sum.key = key
	defer func() {
		e := j.current()
		sum.runGroupID, sum.requestID, sum.calls, sum.reconciled = e.RunGroupID, e.RequestID, e.Calls, e.Reconciled
	}()
	if kerr != nil || verr != nil {
		return p.rejectInvalid(ctx, j, kerr, verr)
	}
	j.id = submission.IdentityOf(req, p.now())

	// Two deliveries of one key in this process (a resend, a redrive racing
	// its original) are told apart by the lease too; this saves the round
	// trip.
	if _, busy := p.inFlight.LoadOrStore(key, struct{}{}); busy {
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeReleased}
	}
	defer p.inFlight.Delete(key)

	entry, rev, err := p.Ledger.Get(ctx, key)
	if err != nil {
		return p.ledgerFailure(j, err)
	}
	j.entry = entry
	if len(entry.Edits) > 0 {
		// The key stands for the request as an operator edited it (a
		// breaker release); every delivery submits that one.
		j.req = applyEdits(req, entry.Edits)
		j.id = submission.IdentityOf(j.req, p.now())
	}
	sit := p.situation(j)
	if entry.State == ledger.StatePending && entry.Driver != 0 && entry.Driver != d.StreamSeq {
		alive, err := p.Outbox.Queued(ctx, entry.Driver)
		if err != nil {
			return p.ledgerFailure(j, err)
		}
		sit.DriverAlive = alive
	}
	admit := submission.Admit(&entry, sit)
	switch admit.Step {
	case submission.StepPublishResult:
		j.log.Info("already submitted; republishing the result", "run_group_id", entry.RunGroupID)
		return p.publishResult(ctx, j, submission.OutcomeDeduplicated)
	case submission.StepRepublishDeadLetter:
		return p.republishDeadLetter(ctx, j)
	case submission.StepDefer:
		j.log.Info("another message of this key is being submitted; this copy is dropped", "driver_seq", entry.Driver)
		return Decision{Action: ActionAck, Outcome: submission.OutcomeDeduplicated}
	case submission.StepRefuse:
		return p.deadLetterUnrecorded(ctx, j, admit.Reason,
			client.Failure{Class: classRefused, Code: "IdentityChanged", Message: admit.Detail})
	}

	if dec, taken := p.takeLease(ctx, j, entry, rev, admit.Step); !taken {
		return dec
	}
	// A handler that loses its lease (it stalled past it and another took
	// the key) must stop: the renewer cancels it.
	hctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	stopRenew := p.renewLease(hctx, j.hold, lost)
	defer stopRenew()
	return p.run(hctx, j)
}

// rejectInvalid dead-letters a message whose key (kerr) or body (verr) is
// unusable; no call is made and the ledger is not touched.
func (p *Processor) rejectInvalid(ctx context.Context, j *job, kerr, verr error) Decision {
	if kerr != nil {
		return p.deadLetterUnrecorded(ctx, j, client.ReasonInvalidRequest,
			client.Failure{Class: client.FailureClassInvalid, Code: client.CodeInvalidKey, Field: client.HeaderKey, Message: kerr.Error()})
	}
	f := client.Failure{Class: client.FailureClassInvalid, Code: submit.CodeInvalidParameter, Message: "the request could not be decoded"}
	var ve *submit.ValidationError
	if errors.As(verr, &ve) {
		f.Code, f.Field, f.Message = ve.Code, ve.Field, ve.Reason
	}
	return p.deadLetterUnrecorded(ctx, j, client.ReasonInvalidRequest, f)
}

// takeLease takes the key (entry at revision rev) for this handler, applying
// the admitted step (a redrive or a repin), and sets j.hold: nobody else may
// act on the key while it is held. If it cannot, it returns what to do with
// the message instead.
func (p *Processor) takeLease(ctx context.Context, j *job, entry ledger.Entry, rev uint64, step submission.Step) (Decision, bool) {
	owner := p.leaseOwner()
	now := p.now()
	if until, live := entry.LiveLease(owner, now); live {
		// Counted as a deliberate hand-back (best effort: a holder's write
		// in between wins, and it re-reads on its next write), so waiting
		// out a lease never spends the delivery budget of a crash loop.
		if entry.Driver == j.d.StreamSeq {
			entry.Released()
			if _, err := p.Ledger.Put(ctx, entry, rev); err != nil && !errors.Is(err, ledger.ErrConflict) {
				p.Metrics.LedgerError()
			}
		}
		return Decision{Action: ActionNak, Delay: until.Sub(now) + 500*time.Millisecond, Outcome: submission.OutcomeReleased}, false
	}
	h := &hold{led: p.Ledger, key: j.key, entry: entry, rev: rev, owner: owner}
	err := h.update(ctx, func(e *ledger.Entry) {
		switch step {
		case submission.StepRedrive:
			e.Redrive(now.UTC(), p.Worker)
			if e.Identity != nil {
				e.Pin(j.id)
			}
		case submission.StepRepin:
			e.Pin(j.id)
		}
		e.Acquire(owner, now.Add(p.leaseTTL()), j.d.StreamSeq, j.id, p.Policy.Horizon)
	})
	if err != nil {
		return p.ledgerFailure(j, err), false
	}
	j.hold = h
	return Decision{}, true
}

func (p *Processor) situation(j *job) submission.Situation {
	return submission.Situation{Now: p.now(), Seq: j.d.StreamSeq, Deliveries: j.d.NumDelivered, Identity: j.id}
}

// renewLease keeps h's lease alive until the returned stop is called, which
// waits for the renewer to end.
func (p *Processor) renewLease(ctx context.Context, h *hold, lost context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(p.leaseTTL() / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				until := p.now().Add(p.leaseTTL())
				if err := h.renew(context.WithoutCancel(ctx), until); err != nil {
					p.Log.Warn("could not renew the lease on a key", "key", h.key, "error", err)
					if errors.Is(err, errLeaseLost) {
						lost(err)
						return
					}
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// run carries out the state machine's steps until the message is settled
// or handed back.
func (p *Processor) run(ctx context.Context, j *job) Decision {
	for {
		e := j.hold.snapshot()
		dec := submission.Next(&e, p.situation(j), p.Policy)
		switch dec.Step {
		case submission.StepPublishResult:
			return p.publishResult(ctx, j, p.successOutcome(j))
		case submission.StepWait:
			if dec.Delay > p.holdLimit() {
				return p.release(ctx, j, dec.Delay)
			}
			if err := sleep(ctx, dec.Delay); err != nil {
				return p.release(ctx, j, 0)
			}
		case submission.StepLookup:
			if d, done := p.lookup(ctx, j); done {
				return d
			}
		case submission.StepCall:
			if d, done := p.cancelledGate(ctx, j); done {
				return d
			}
			if d, done := p.breakerGate(ctx, j); done {
				return d
			}
			if d, done := p.call(ctx, j); done {
				return d
			}
			if d, done := p.recordRejection(ctx, j); done {
				return d
			}
		case submission.StepDeadLetter:
			if _, eligible := breaker.KindOf(e.PendingCode); eligible && dec.Reason == client.ReasonPermanentError {
				// The breaker of this resource may have opened meanwhile:
				// then the request is held, or released with an edit.
				if d, done := p.breakerGate(ctx, j); done {
					return d
				}
				if j.current().Pending == ledger.PendingNone {
					continue // released with an edit: call again
				}
			}
			return p.deadLetter(ctx, j, dec.Reason, p.failureFor(e, dec))
		case submission.StepGiveUp:
			if err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) { e.GiveUp() }); err != nil {
				return p.ledgerFailure(j, err)
			}
		default:
			j.log.Error("the state machine chose a step that needs no lease; handing the message back", "step", dec.Step.String())
			return p.release(ctx, j, 5*time.Second)
		}
	}
}

// cancelledGate dead-letters, before its call, a request whose batch was
// cancelled. One a call of which may have created a run group goes on
// instead: its lookup finds the group, and the tracker terminates it as a
// cancelled batch's member.
func (p *Processor) cancelledGate(ctx context.Context, j *job) (Decision, bool) {
	b := j.batch()
	if p.Batches == nil || b == "" || !p.Batches.Cancelled(ctx, b) || j.current().MaybeCreated {
		return Decision{}, false
	}
	return p.deadLetter(ctx, j, client.ReasonBatchCancelled, client.Failure{Class: classCancelled, Code: "BatchCancelled",
		Message: "the request's batch was cancelled before it was submitted"}), true
}

// markMember records a dead letter in the request's batch member, so the
// batch counts it terminal. Its failure hands the message back: the
// redelivery republishes the same dead letter (dropped as a duplicate) and
// tries again.
func (p *Processor) markMember(ctx context.Context, j *job, reason client.DeadLetterReason) error {
	b := j.batch()
	if p.Batches == nil || b == "" {
		return nil
	}
	if err := p.Batches.DeadLettered(ctx, b, j.key, reason); err != nil {
		return fmt.Errorf("record the dead letter in the batch: %w", err)
	}
	return nil
}

// resourcesOf lists the resources a request names, for the breaker.
func resourcesOf(req *submit.RunApplicationRequest) []breaker.Resource {
	rs := []breaker.Resource{{Kind: breaker.KindApplication, ID: req.ApplicationId}, {Kind: breaker.KindEnvironment, ID: req.EnvironmentId}}
	for _, f := range []struct {
		kind string
		v    *string
	}{{breaker.KindApplicationVersion, req.ApplicationVersionId}, {breaker.KindProject, req.ProjectId}, {breaker.KindTable, req.TableId}} {
		if f.v != nil {
			rs = append(rs, breaker.Resource{Kind: f.kind, ID: *f.v})
		}
	}
	return rs
}

// breakerGate applies the breaker of the request's resources: open, the
// request is held (handed back, no call); released, the operator's edits
// are applied (only to a request no call of which can have created a run
// group) and the request goes on; dead-lettered, it is dead-lettered.
func (p *Processor) breakerGate(ctx context.Context, j *job) (Decision, bool) {
	if p.Breaker == nil {
		return Decision{}, false
	}
	trip, found, err := p.Breaker.Check(ctx, resourcesOf(j.req))
	if err != nil || !found {
		return Decision{}, false // the breaker fails open: the API decides
	}
	e := j.current()
	switch trip.State {
	case breaker.Open:
		p.Metrics.BreakerHeld(trip.Resource.Kind)
		return p.release(ctx, j, p.BreakerHold), true
	case breaker.DeadLettered:
		if e.MaybeCreated {
			return Decision{}, false // a run group may exist: the normal path decides
		}
		return p.deadLetter(ctx, j, client.ReasonBreaker, client.Failure{Class: submit.ClassPermanent.String(), Code: trip.Code,
			Message: "held by the breaker of " + trip.Resource.Kind + " and dead-lettered by an operator"}), true
	case breaker.Released:
		if e.BreakerRelease == trip.ID || e.MaybeCreated {
			// Applied once already (a rejection after it is final), or a run
			// group may exist (no edit may change what the key stands for).
			return Decision{}, false
		}
		edited, id := j.req, j.id
		if len(trip.Edits) > 0 {
			edited = applyEdits(j.req, trip.Edits)
			id = submission.IdentityOf(edited, p.now())
		}
		pinned := true
		err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
			if pinned = e.Pin(id); !pinned {
				return
			}
			clearRejection(e)
			e.BreakerRelease = trip.ID
			if len(trip.Edits) > 0 {
				e.Edits = trip.Edits
			}
		})
		if err != nil {
			return p.ledgerFailure(j, err), true
		}
		if pinned {
			j.req, j.id = edited, id
			j.log.Info("the breaker was released; submitting the request", "trip", trip.ID, "edited", len(trip.Edits) > 0)
		}
	}
	return Decision{}, false
}

func clearRejection(e *ledger.Entry) {
	if e.Pending == ledger.PendingPermanent {
		e.Pending, e.PendingCode, e.NotBefore = ledger.PendingNone, "", time.Time{}
	}
}

// applyEdits returns a copy of req with the operator's edits of resource
// fields (breaker.ValidateEdits admits only those).
func applyEdits(req *submit.RunApplicationRequest, edits map[string]string) *submit.RunApplicationRequest {
	r := *req
	for field, v := range edits {
		switch field {
		case breaker.KindApplication:
			r.ApplicationId = v
		case breaker.KindEnvironment:
			r.EnvironmentId = v
		case breaker.KindApplicationVersion:
			r.ApplicationVersionId = &v
		case breaker.KindProject:
			r.ProjectId = &v
		case breaker.KindTable:
			r.TableId = &v
		}
	}
	return &r
}

// recordRejection counts a rejection for its resource's breaker. If the
// breaker is not open (yet), the request waits one window before its dead
// letter, so that a whole sample sheet with the same mistake ends held,
// not partly dead-lettered.
func (p *Processor) recordRejection(ctx context.Context, j *job) (Decision, bool) {
	e := j.current()
	kind, eligible := breaker.KindOf(e.PendingCode)
	if p.Breaker == nil || !eligible || e.Pending != ledger.PendingPermanent || e.MaybeCreated || e.State != ledger.StatePending ||
		e.BreakerRelease != "" {
		return Decision{}, false
	}
	var id string
	for _, r := range resourcesOf(j.req) {
		if r.Kind == kind {
			id = r.ID
		}
	}
	open, err := p.Breaker.Failed(ctx, breaker.Resource{Kind: kind, ID: id}, e.PendingCode, j.key)
	if err != nil || open {
		return Decision{}, false // open: the dead-letter step finds it and holds the request
	}
	until := p.now().Add(p.BreakerWindow)
	if err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) { e.HoldUntil(until) }); err != nil {
		return p.ledgerFailure(j, err), true
	}
	return Decision{}, false
}

// successOutcome says whether this handler created the result or found it.
func (p *Processor) successOutcome(j *job) submission.Outcome {
	if j.entry.State == ledger.StateSubmitted {
		return submission.OutcomeDeduplicated
	}
	return submission.OutcomeSuccess
}

// failureFor describes a dead letter decided from the ledger entry: the last
// call's code, or the state machine's own reason.
func (p *Processor) failureFor(e ledger.Entry, dec submission.Decision) client.Failure {
	f := client.Failure{Class: submit.ClassPermanent.String(), Code: e.PendingCode, RequestID: e.PendingRequestID, Message: dec.Detail}
	switch dec.Reason {
	case client.ReasonMaxDeliveries:
		f.Class, f.Code = classMaxDeliveries, "MaxDeliveriesExceeded"
	case client.ReasonReconcileExhausted:
		f.Class = submit.ClassAmbiguous.String()
		if f.Code == "" {
			f.Code = "ReconcileExhausted"
		}
	case client.ReasonRetriesExhausted:
		f.Class = lastCallClass(e)
	case client.ReasonNameConflict:
		f.Code = "InvalidParameterValue.DuplicateName"
	}
	if f.Code == "" {
		f.Code = "Unknown"
	}
	return f
}

func lastCallClass(e ledger.Entry) string {
	for _, ev := range slices.Backward(e.History) {
		if ev.Kind == "call" || ev.Kind == "lookup" {
			return ev.Outcome
		}
	}
	return classUnknown
}

// call makes one RunApplication call: wait for the fleet and a token, then
// write the intent (re-checking that this handler still holds the key, so a
// grant that came late cannot race another holder), call, and record.
func (p *Processor) call(ctx context.Context, j *job) (Decision, bool) {
	trial, err := p.Pause.WaitTurn(ctx, j.hold.owner)
	if err != nil {
		return p.release(ctx, j, 0), true
	}
	if trial {
		j.log.Info("making the trial call of a paused fleet")
	}
	d, done, outcome := p.callOnce(ctx, j, trial)
	if trial {
		if err := p.Pause.EndTrial(context.WithoutCancel(ctx), j.hold.owner, outcome); err != nil {
			j.log.Warn("could not report the trial call", "error", err)
		}
	}
	return d, done
}

// callOnce makes the call and reports, for a trial, what it proved.
func (p *Processor) callOnce(ctx context.Context, j *job, trial bool) (Decision, bool, pause.Outcome) {
	waited, err := p.RunLimiter.Wait(ctx)
	if err != nil {
		return p.release(ctx, j, 0), true, pause.TrialInconclusive
	}
	p.Metrics.RateLimitWait(waited)
	// Again after the waits: a pause or a long queue for a token may have
	// lasted past the batch's cancel.
	if d, done := p.cancelledGate(ctx, j); done {
		return d, true, pause.TrialInconclusive
	}
	callStart := p.now()
	deadline := callStart.Add(p.CallTimeout + p.callMargin())
	err = j.hold.update(ctx, func(e *ledger.Entry) {
		if e.Identity == nil {
			e.Pin(submission.IdentityOf(j.req, callStart))
		}
		e.BeginCall(j.hold.owner, callStart.UTC(), deadline.UTC())
	})
	if err != nil {
		// Nothing was sent: another holder has the key, or the ledger is
		// unreachable. The token is lost; the call is not made.
		return p.ledgerFailure(j, err), true, pause.TrialInconclusive
	}

	// The call must end within the protection the ledger records for it,
	// however long the intent write took.
	callCtx, cancel := context.WithDeadline(ctx, deadline.Add(-p.callMargin()/2))
	resp, err := p.API.RunApplication(callCtx, j.req)
	cancel()
	at := p.now()
	elapsed := at.Sub(callStart)
	if err == nil {
		p.Metrics.APICallSucceeded(metrics.ActionRunApplication, elapsed)
		p.Pause.ObserveSuccess()
		p.Metrics.LastSuccess(at)
		o := ledger.CallOutcome{Effect: ledger.EffectCreated, Class: "success", RequestID: resp.RequestId,
			RunGroupID: resp.RunGroupId, At: at.UTC(), Worker: p.Worker}
		d, done := p.settle(ctx, j, o, false)
		return d, done, pause.TrialSucceeded
	}
	return p.callFailed(ctx, j, asAPIError(err), at, elapsed, trial)
}

// callFailed records a RunApplication call that returned an error and acts
// on its class: throttling slows the limiter, a systemic error pauses the
// fleet, and a call cut off by shutdown hands the message back.
func (p *Processor) callFailed(ctx context.Context, j *job, apiErr *submit.Error, at time.Time, elapsed time.Duration, trial bool) (Decision, bool, pause.Outcome) {
	p.Metrics.APICallFailed(metrics.ActionRunApplication, apiErr.Class, submit.MetricCode(apiErr.Code), elapsed)
	j.log.Warn("RunApplication failed", "class", apiErr.Class.String(), "code", apiErr.Code, "request_id", apiErr.RequestID, "attempt", j.current().Calls)
	o := ledger.CallOutcome{Class: apiErr.Class.String(), Code: apiErr.Code, RequestID: apiErr.RequestID, At: at.UTC(), Worker: p.Worker}
	o.Effect = effectOf(apiErr)
	if ctx.Err() != nil && o.Effect == ledger.EffectNotExecuted {
		// Shutdown stopped the call before it was sent: nothing happened,
		// and no attempt is spent.
		err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
			e.SettleCall(o, p.Policy.Horizon)
			e.Released()
			e.Release(j.hold.owner)
		})
		if err != nil {
			p.Metrics.LedgerError()
		}
		return Decision{Action: ActionNak, Outcome: submission.OutcomeReleased}, true, pause.TrialInconclusive
	}
	if ctx.Err() != nil && apiErr.RequestID == "" && o.Effect == ledger.EffectMaybeExecuted {
		// Shutdown cut the call off before any answer: the server may still
		// execute it. The in-flight record keeps the key protected until
		// the call's deadline; whoever takes it next looks up first.
		err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
			e.CutOff(at.UTC(), p.Worker)
			e.Released()
			e.Release(j.hold.owner)
		})
		if err != nil {
			p.Metrics.LedgerError()
		}
		return Decision{Action: ActionNak, Outcome: submission.OutcomeReleased}, true, pause.TrialInconclusive
	}
	if reason, retried := submission.RetryReasonOf(apiErr.Class); retried {
		p.Metrics.Retry(reason)
	}
	outcome := pause.TrialInconclusive
	switch apiErr.Class {
	case submit.ClassThrottled:
		o.Throttled = true
		p.RunLimiter.Throttled(ctx)
	case submit.ClassTransient:
		if apiErr.RequestID == "" {
			p.Pause.ObserveTransportFailure(ctx)
		}
	case submit.ClassSystemic:
		outcome = pause.TrialFailed
		first, err := p.Pause.Pause(ctx, pause.ReasonFor(apiErr.Code), apiErr.Code)
		if err != nil {
			j.log.Warn("could not set the fleet pause", "error", err)
		}
		// A strike only for the call that paused a running fleet: not for a
		// trial, and not for the calls already in flight when another one
		// paused it (an outage would otherwise strike them all).
		o.Systemic, o.Strike = true, !trial && first
	}
	d, done := p.settle(ctx, j, o, o.Effect == ledger.EffectMaybeExecuted && apiErr.RequestID == "" && timedOut(apiErr))
	return d, done, outcome
}

// effectOf says what an error answer means for the run group: only a
// failure that proves nothing was done (submit.Error.NothingDone) is taken
// as "not executed".
func effectOf(e *submit.Error) ledger.Effect {
	switch {
	case e.Class == submit.ClassPermanent && e.DuplicateName:
		return ledger.EffectDuplicateName
	case e.Class == submit.ClassPermanent:
		return ledger.EffectRejected
	case e.NothingDone():
		return ledger.EffectNotExecuted
	default:
		return ledger.EffectMaybeExecuted
	}
}

// timedOut reports a call the client gave up waiting for: the server may
// still be executing it.
func timedOut(e *submit.Error) bool {
	var ne net.Error
	return errors.Is(e, context.DeadlineExceeded) || (errors.As(e, &ne) && ne.Timeout())
}

// settle records a call's outcome; a created run group is published. A
// call the client gave up waiting for may still be executing on the server:
// nothing more is sent for the key until its recorded deadline.
func (p *Processor) settle(ctx context.Context, j *job, o ledger.CallOutcome, timeout bool) (Decision, bool) {
	if o.Effect == ledger.EffectCreated {
		return p.settleCreated(ctx, j, o), true
	}
	err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
		var deadline time.Time
		if e.InFlight != nil {
			deadline = e.InFlight.Deadline
		}
		submission.AfterCall(e, o, p.Policy)
		if timeout {
			e.HoldUntil(deadline)
		}
	})
	if err != nil {
		p.Metrics.LedgerError()
		j.log.Error("could not record the call's outcome in the ledger", "error", err)
		// The in-flight record stays: the next holder waits for its deadline
		// and looks the run group up.
		return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: submission.OutcomeError}, true
	}
	return Decision{}, false
}

// settleCreated records a RunGroupId the API returned and publishes it. The
// answer is authoritative: the write is retried, and if this handler's lease
// was lost meanwhile, the entry is marked submitted whoever holds it, so the
// run group is never left to a lagging lookup to rediscover.
func (p *Processor) settleCreated(ctx context.Context, j *job, o ledger.CallOutcome) Decision {
	ctx = context.WithoutCancel(ctx)
	record := func(e *ledger.Entry) {
		if e.State == ledger.StateDead {
			j.log.Error("a run group was created for a request already dead-lettered; publishing its result as well",
				"run_group_id", o.RunGroupID)
		}
		submission.AfterCall(e, o, p.Policy)
	}
	err := j.hold.update(ctx, record)
	for attempt := 0; err != nil && attempt < 20; attempt++ {
		p.Metrics.LedgerError()
		j.log.Warn("could not record the created run group; retrying", "run_group_id", o.RunGroupID, "error", err)
		_ = sleep(ctx, min(time.Duration(attempt+1)*250*time.Millisecond, 2*time.Second))
		err = p.forceSubmitted(ctx, j, record)
	}
	if err != nil {
		j.log.Error("could not record the created run group; the next holder will look it up", "run_group_id", o.RunGroupID, "error", err)
		return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: submission.OutcomeError}
	}
	return p.publishResult(ctx, j, submission.OutcomeSuccess)
}

// forceSubmitted applies record to the stored entry by compare-and-set,
// whoever holds the lease now.
func (p *Processor) forceSubmitted(ctx context.Context, j *job, record func(*ledger.Entry)) error {
	cur, rev, err := p.Ledger.Get(ctx, j.key)
	if err != nil {
		return err
	}
	if cur.State != ledger.StateSubmitted {
		record(&cur)
	}
	if _, err := p.Ledger.Put(ctx, cur, rev); err != nil {
		return err
	}
	j.hold.mu.Lock()
	j.hold.entry = cur
	j.hold.mu.Unlock()
	return nil
}

// lookup looks the run group up by Name, one Describe token per page.
func (p *Processor) lookup(ctx context.Context, j *job) (Decision, bool) {
	if err := p.Pause.WaitLookup(ctx); err != nil {
		return p.release(ctx, j, 0), true
	}
	start := p.now()
	groups, err := p.API.FindRunGroupsByName(ctx, j.req.ProjectId, j.req.Name, func(ctx context.Context) error {
		waited, err := p.DescribeLimiter.Wait(ctx)
		p.Metrics.RateLimitWait(waited)
		return err
	})
	at := p.now()
	elapsed := at.Sub(start)
	if err != nil {
		if ctx.Err() != nil {
			return p.release(ctx, j, 0), true
		}
		return p.lookupFailed(ctx, j, asAPIError(err), at, elapsed)
	}
	p.Metrics.APICallSucceeded(metrics.ActionDescribeRunGroups, elapsed)
	e := j.hold.snapshot()
	var pinned time.Time
	if e.Identity != nil {
		pinned = e.Identity.PinnedAt
	}
	var holder *submit.RunGroup
	for i := range groups {
		g := &groups[i]
		if e.MaybeCreated && submission.Owns(g, j.req, pinned, p.Policy.CreateSkew) {
			p.Metrics.Reconciled(metrics.ReconcileFound)
			j.log.Info("reconciled: the run group exists", "run_group_id", g.RunGroupId)
			err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
				e.LookupFound(g.RunGroupId, "", at.UTC(), p.Worker)
			})
			if err != nil {
				return p.ledgerFailure(j, err), true
			}
			p.Metrics.LastSuccess(at)
			return p.publishResult(ctx, j, submission.OutcomeSuccess), true
		}
		holder = g
	}
	if holder != nil {
		p.Metrics.Reconciled(metrics.ReconcileConflict)
		if err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) { e.LookupConflict("", at.UTC(), p.Worker) }); err != nil {
			return p.ledgerFailure(j, err), true
		}
		return p.deadLetter(ctx, j, client.ReasonNameConflict, client.Failure{
			Class: submit.ClassPermanent.String(), Code: "InvalidParameterValue.DuplicateName",
			Message: "the run group name is held by run group " + holder.RunGroupId + ", which this request did not create",
		}), true
	}
	p.Metrics.Reconciled(metrics.ReconcileNotFound)
	err = j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
		e.LookupNotFound("", at.UTC(), p.Worker, submission.LookupDelay(e, p.Policy, at, submission.Jitter()))
	})
	if err != nil {
		return p.ledgerFailure(j, err), true
	}
	return Decision{}, false
}

// lookupFailed schedules another lookup after a failed one. Lookups are
// safe to repeat, and a key that may have created its run group is never
// dead-lettered because lookups failed: it is looked up again with growing
// delays (handed back while it waits), and the reconcile error metric
// tells the operator. Throttled lookups cost nothing. A key that cannot
// have created anything (it only needed the holder of its Name) spends the
// retry budget.
func (p *Processor) lookupFailed(ctx context.Context, j *job, apiErr *submit.Error, at time.Time, elapsed time.Duration) (Decision, bool) {
	p.Metrics.APICallFailed(metrics.ActionDescribeRunGroups, apiErr.Class, submit.MetricCode(apiErr.Code), elapsed)
	p.Metrics.Reconciled(metrics.ReconcileError)
	switch apiErr.Class {
	case submit.ClassSystemic:
		if _, err := p.Pause.Pause(ctx, pause.ReasonFor(apiErr.Code), apiErr.Code); err != nil {
			j.log.Warn("could not set the fleet pause", "error", err)
		}
	case submit.ClassThrottled:
		p.DescribeLimiter.Throttled(ctx)
	}
	e := j.hold.snapshot()
	charge := apiErr.Class != submit.ClassSystemic && apiErr.Class != submit.ClassThrottled
	delay := min(p.Policy.LookupMax, p.Policy.LookupInitial<<min(e.Lookups, 5))
	if charge && !e.MaybeCreated {
		d, ok := p.Policy.Retry.Next(e.RetryAttempts, e.RetryActive)
		if !ok {
			return p.deadLetter(ctx, j, client.ReasonReconcileExhausted, client.Failure{Class: apiErr.Class.String(), Code: apiErr.Code,
				RequestID: apiErr.RequestID, Message: "the holder of the run group name could not be looked up within the retry budget"}), true
		}
		delay = d
	}
	err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
		e.LookupFailed(apiErr.Class.String(), apiErr.Code, apiErr.RequestID, at.UTC(), p.Worker, delay)
		if charge && !e.MaybeCreated {
			e.ScheduleRetry(at.UTC(), delay)
		}
	})
	if err != nil {
		return p.ledgerFailure(j, err), true
	}
	return Decision{}, false
}

func (p *Processor) publishResult(ctx context.Context, j *job, outcome submission.Outcome) Decision {
	e := j.current()
	r := client.Result{
		Key: j.key, RunGroupID: e.RunGroupID, RequestID: e.RequestID, Attempts: e.Calls,
		Reconciled: e.Reconciled, EnqueuedAt: j.d.Timestamp.UTC(), SubmittedAt: e.SubmittedAt, Worker: p.Worker,
		Batch: j.batch(),
	}
	dup, err := p.Outbox.PublishResult(context.WithoutCancel(ctx), r)
	if err != nil {
		j.log.Error("could not publish the result", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeError}
	}
	p.Metrics.ResultPublished(dup)
	return Decision{Action: ActionAck, Outcome: outcome}
}

func (p *Processor) deadLetter(ctx context.Context, j *job, reason client.DeadLetterReason, f client.Failure) Decision {
	ctx = context.WithoutCancel(ctx)
	err := j.hold.update(ctx, func(e *ledger.Entry) { e.MarkDead(j.d.StreamSeq, string(reason), f.Code, p.now().UTC(), p.Worker) })
	if err != nil {
		p.Metrics.LedgerError()
		j.log.Warn("could not record the dead letter in the ledger", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeError}
	}
	if err := p.publishRecordedDeadLetter(ctx, j, reason, f); err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeError}
	}
	p.Metrics.DeadLettered(reason)
	j.log.Warn("dead-lettered", "reason", reason, "code", f.Code, "request_id", f.RequestID, "attempts", j.current().Calls)
	return Decision{Action: ActionAck, Outcome: submission.OutcomeDeadLettered}
}

// republishDeadLetter publishes again the dead letter the ledger records
// for this very message, under the message ID deadLetter used, so JetStream
// drops it if the first publish landed and it lands now if it did not.
func (p *Processor) republishDeadLetter(ctx context.Context, j *job) Decision {
	ctx = context.WithoutCancel(ctx)
	// deadLetter recorded the reason and code as the last event, after the
	// call whose outcome (class) led there.
	reason, f := client.ReasonMaxDeliveries, client.Failure{Class: classUnknown, Code: "Unknown",
		Message: "rebuilt from the ledger: the worker stopped between recording this dead letter and publishing it"}
	found := false
	for _, ev := range slices.Backward(j.entry.History) {
		if !found && ev.Kind == "dead_letter" {
			reason, f.Code, found = client.DeadLetterReason(ev.Outcome), ev.Code, true
		} else if found && (ev.Kind == "call" || ev.Kind == "lookup") {
			f.Class, f.RequestID = ev.Outcome, ev.RequestID
			break
		}
	}
	if err := p.publishRecordedDeadLetter(ctx, j, reason, f); err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeError}
	}
	return Decision{Action: ActionAck, Outcome: submission.OutcomeDeduplicated}
}

// publishRecordedDeadLetter publishes the dead letter of a request the ledger
// marked dead. Its message ID is derived from the ledger entry alone, so a
// republish after a crash is recognised by JetStream as the same message.
func (p *Processor) publishRecordedDeadLetter(ctx context.Context, j *job, reason client.DeadLetterReason, f client.Failure) error {
	e := j.current()
	dl := p.deadLetterBody(j, reason, f)
	dl.Attempts = e.Calls
	dl.History = e.History
	msgID := fmt.Sprintf("%s/%d/%d", j.key, j.d.StreamSeq, e.Calls)
	if err := p.Outbox.PublishDeadLetter(ctx, dl, msgID); err != nil {
		return err
	}
	return p.markMember(ctx, j, reason)
}

// deadLetterUnrecorded dead-letters a message without changing its key's
// ledger entry: an invalid request (rejected before any call), or one
// refused because the key stands for another request. The failure class
// (invalid or refused) ends the message ID, so a redelivery's dead letter
// is dropped by JetStream as the same message.
func (p *Processor) deadLetterUnrecorded(ctx context.Context, j *job, reason client.DeadLetterReason, f client.Failure) Decision {
	refused := f.Class == classRefused
	dl := p.deadLetterBody(j, reason, f)
	if refused {
		e := j.current()
		dl.Attempts, dl.History = e.Calls, e.History
	}
	msgID := fmt.Sprintf("%s/%d/%s", j.key, j.d.StreamSeq, f.Class)
	err := p.Outbox.PublishDeadLetter(context.WithoutCancel(ctx), dl, msgID)
	if err == nil {
		err = p.markMember(context.WithoutCancel(ctx), j, reason)
	}
	if err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeError}
	}
	p.Metrics.DeadLettered(reason)
	if refused {
		j.log.Warn("dead-lettered a refused request", "reason", reason, "code", f.Code)
	} else {
		j.log.Warn("dead-lettered an invalid request", "code", f.Code, "field", f.Field)
	}
	return Decision{Action: ActionAck, Outcome: submission.OutcomeDeadLettered}
}

func (p *Processor) deadLetterBody(j *job, reason client.DeadLetterReason, f client.Failure) client.DeadLetter {
	dl := client.DeadLetter{
		Key: j.key, Reason: reason, Error: f, Deliveries: j.d.NumDelivered,
		EnqueuedAt: j.d.Timestamp.UTC(), FailedAt: p.now().UTC(), Worker: p.Worker, StreamSequence: j.d.StreamSeq,
		Batch: j.batch(),
	}
	// The lane travels with the dead letter, so a redrive goes back to it
	// (an urgent sample does not land behind the routine backlog).
	if h := j.d.Header.Get(client.HeaderPriority); h != "" {
		if pr, err := client.ParsePriority(h); err == nil {
			dl.Priority = pr
		}
	}
	if fk := j.d.Header.Get(client.HeaderFairnessKey); fk != "" && len(fk) <= client.MaxFairnessKeyBytes {
		dl.FairnessKey = fk
	}
	if json.Valid(j.d.Data) && string(bytes.TrimSpace(j.d.Data)) != "null" {
		dl.Request = json.RawMessage(j.d.Data)
	} else {
		// Not a JSON value (or JSON null): kept byte for byte. An empty body
		// leaves both fields empty, which DecodeDeadLetter accepts only for
		// invalid_request.
		dl.RawBase64 = base64.StdEncoding.EncodeToString(j.d.Data)
	}
	return dl
}

func (p *Processor) ledgerFailure(j *job, err error) Decision {
	if errors.Is(err, ledger.ErrConflict) || errors.Is(err, errLeaseLost) {
		// Another delivery of the same request holds the key now.
		j.log.Info("the key is held by another handler; handing the message back")
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: submission.OutcomeReleased}
	}
	p.Metrics.LedgerError()
	j.log.Warn("ledger unavailable; handing the message back", "error", err)
	return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: submission.OutcomeError}
}

// release hands the message back after delay, keeping what the ledger
// knows, counting the hand-back (it is not a crash) and freeing the key.
func (p *Processor) release(ctx context.Context, j *job, delay time.Duration) Decision {
	err := j.hold.update(context.WithoutCancel(ctx), func(e *ledger.Entry) {
		e.Released()
		e.Release(j.hold.owner)
	})
	if err != nil {
		p.Metrics.LedgerError()
	}
	return Decision{Action: ActionNak, Delay: delay, Outcome: submission.OutcomeReleased}
}

// requestKey returns the idempotency key: the Omicsq-Key header, else
// Nats-Msg-Id, else one derived from the request (or, for a body that is not
// a request, from its bytes, so even garbage gets a stable DLQ subject).
func requestKey(h nats.Header, req *submit.RunApplicationRequest, raw []byte) (string, error) {
	for _, name := range []string{client.HeaderKey, client.HeaderMsgID} {
		if k := h.Get(name); k != "" {
			if err := client.ValidateKey(k); err != nil {
				return client.DeriveKey(raw), err
			}
			return k, nil
		}
	}
	if req != nil {
		if canonical, err := json.Marshal(req); err == nil {
			return client.DeriveKey(canonical), nil
		}
	}
	return client.DeriveKey(raw), nil
}

func asAPIError(err error) *submit.Error {
	var apiErr *submit.Error
	if errors.As(err, &apiErr) {
		return apiErr
	}
	return &submit.Error{Class: submit.ClassAmbiguous, Code: "Unknown", Err: err}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
