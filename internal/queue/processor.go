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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/retry"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// API is the part of the Omics client the processor uses.
type API interface {
	RunApplication(ctx context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error)
	FindRunGroupsByName(ctx context.Context, projectID *string, name string) ([]submit.RunGroup, error)
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
	Outcome string // a metrics.Outcome* value
}

// summary is what the per-message log line reports.
type summary struct {
	key, runGroupID, requestID string
	calls                      int
	reconciled                 bool
}

// Processor turns one request message into exactly one effect: a run group
// (published as a result) or a dead letter. It is safe for concurrent use.
type Processor struct {
	JS       jetstream.JetStream
	Topology Topology
	Ledger   *ledger.Ledger
	API      API
	// RunLimiter paces RunApplication, DescribeLimiter DescribeRunGroups:
	// each action has its own quota.
	RunLimiter      Limiter
	DescribeLimiter Limiter
	Pause           *pause.Controller
	Retry           retry.Policy
	Limits          submit.Limits
	// MaxReconciles bounds the reconciliation cycles that find nothing before
	// the request is dead-lettered with its history. Default 5.
	MaxReconciles int
	// CallTimeout is the API client's per-call timeout; the ledger lease of
	// an in-flight call lasts this long plus a margin.
	CallTimeout time.Duration
	Metrics     *metrics.Metrics
	Log         *slog.Logger
	Worker      string
	Now         func() time.Time

	runOnce  sync.Once
	runOwner string   // Worker plus a random per-process nonce: the lease owner
	inFlight sync.Map // keys being handled in this process
}

// leaseOwner names this process run, not just the worker: a restarted worker
// with the same name is a different owner, and must wait out (or reconcile
// after) its predecessor's lease like anyone else.
func (p *Processor) leaseOwner() string {
	p.runOnce.Do(func() {
		var b [6]byte
		_, _ = rand.Read(b[:])
		p.runOwner = p.Worker + "/" + hex.EncodeToString(b[:])
	})
	return p.runOwner
}

func (p *Processor) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
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
	entry ledger.Entry
	rev   uint64
	log   *slog.Logger
}

func (p *Processor) handle(ctx context.Context, d Delivery, sum *summary) Decision {
	req, verr := submit.DecodeRunApplication(d.Data, p.Limits)
	key, kerr := requestKey(d.Header, req, d.Data)
	j := &job{d: d, key: key, req: req, log: p.Log.With("key", key, "seq", d.StreamSeq, "delivery", d.NumDelivered)}
	sum.key = key
	defer func() {
		sum.runGroupID, sum.requestID, sum.calls, sum.reconciled = j.entry.RunGroupID, j.entry.RequestID, j.entry.Calls, j.entry.Reconciled
	}()
	if kerr != nil {
		return p.deadLetterInvalid(ctx, j, Failure{Class: "invalid", Code: "InvalidIdempotencyKey", Field: HeaderKey, Message: kerr.Error()})
	}
	if verr != nil {
		f := Failure{Class: "invalid", Code: "InvalidParameter", Message: "the request could not be decoded"}
		var ve *submit.ValidationError
		if errors.As(verr, &ve) {
			f.Code, f.Field, f.Message = ve.Code, ve.Field, ve.Reason
		}
		return p.deadLetterInvalid(ctx, j, f)
	}

	// Two deliveries of one key in this process (a resend after the
	// de-duplication window, a redrive racing its original) must not run
	// side by side: the ledger lease only tells processes apart.
	if _, busy := p.inFlight.LoadOrStore(key, struct{}{}); busy {
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeReleased}
	}
	defer p.inFlight.Delete(key)

	var err error
	j.entry, j.rev, err = p.Ledger.Get(ctx, key)
	if err != nil {
		return p.ledgerFailure(ctx, j, err)
	}
	switch j.entry.State {
	case ledger.StateSubmitted:
		j.log.Info("already submitted; republishing the result", "run_group_id", j.entry.RunGroupID)
		return p.publishResult(ctx, j, metrics.OutcomeDeduplicated)
	case ledger.StateDead:
		if j.entry.DeadSequence == d.StreamSeq {
			// Our own earlier delivery was dead-lettered but not acked. The
			// worker may have stopped (or the publish failed) between
			// recording the dead letter and publishing it: publish it again.
			return p.republishDeadLetter(ctx, j)
		}
		// A redrive (or a republish) of a dead request: a new run of the
		// state machine that still remembers MaybeCreated and the calls.
		j.entry.State = ledger.StatePending
		j.entry.RetryAttempts, j.entry.Reconciles, j.entry.FirstCallAt = 0, 0, time.Time{}
		j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "redrive", Outcome: "restarted", Worker: p.Worker})
	}
	if j.entry.Uncertain {
		if until, live := p.leaseHeldElsewhere(j.entry); live {
			// Another process's call may still be open: let it finish.
			return Decision{Action: ActionNak, Delay: until.Sub(p.now()) + time.Second, Outcome: metrics.OutcomeReleased}
		}
		// A call was sent and nobody learned its outcome (the worker died
		// or the message was released mid-call).
		j.entry.MaybeCreated = true
	}
	return p.run(ctx, j)
}

// leaseHeldElsewhere reports whether another process holds a live lease on
// the entry, i.e. may still have a call open, and until when.
func (p *Processor) leaseHeldElsewhere(e ledger.Entry) (time.Time, bool) {
	return e.LeaseUntil, e.LeaseOwner != "" && e.LeaseOwner != p.leaseOwner() && p.now().Before(e.LeaseUntil)
}

// run is the submission state machine: reconcile when a run group may
// exist, otherwise call, and map the classified outcome to the next step.
func (p *Processor) run(ctx context.Context, j *job) Decision {
	sched := p.Retry.Resume(max(1, j.entry.RetryAttempts), j.entry.FirstCallAt, p.Now)
	for {
		if j.entry.Uncertain {
			if dec, done := p.reconcile(ctx, j, sched); done {
				return dec
			}
			if j.entry.Uncertain {
				continue // the lookup failed retryably and has waited; look again
			}
		}
		if err := p.Pause.WaitResumed(ctx); err != nil {
			return p.release(ctx, j, 0)
		}
		// The intent: from here until a definite answer, a run group may exist.
		// It is written before the token is taken, so that nothing but the
		// request itself stands between the limiter's grant and the API: the
		// limiter's bound is on arrivals at the server.
		before := j.entry
		now := p.now().UTC()
		j.entry.Calls++
		j.entry.Uncertain = true
		j.entry.LeaseOwner, j.entry.LeaseUntil = p.leaseOwner(), now.Add(p.CallTimeout+10*time.Second)
		if j.entry.FirstCallAt.IsZero() {
			j.entry.FirstCallAt = now
		}
		if dec, ok := p.put(ctx, j); !ok {
			return dec
		}
		waited, err := p.RunLimiter.Wait(ctx)
		if err != nil {
			// Nothing was sent: take the intent back before handing over.
			j.entry.Calls, j.entry.Uncertain = before.Calls, before.Uncertain
			j.entry.LeaseOwner, j.entry.LeaseUntil, j.entry.FirstCallAt = before.LeaseOwner, before.LeaseUntil, before.FirstCallAt
			return p.release(ctx, j, 0)
		}
		p.Metrics.RateLimitWait(waited)

		callStart := p.now()
		resp, err := p.API.RunApplication(ctx, j.req)
		elapsed := p.now().Sub(callStart)
		if err == nil {
			p.Metrics.APICall("RunApplication", "success", "none", elapsed)
			p.Pause.ObserveSuccess()
			j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "call", Outcome: "success", RequestID: resp.RequestId, Worker: p.Worker})
			return p.succeed(ctx, j, resp.RunGroupId, resp.RequestId, false)
		}
		apiErr := asAPIError(err)
		p.Metrics.APICall("RunApplication", apiErr.Class.String(), submit.MetricCode(apiErr.Code), elapsed)
		j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "call", Outcome: apiErr.Class.String(), Code: apiErr.Code, RequestID: apiErr.RequestID, Worker: p.Worker})
		j.log.Warn("RunApplication failed", "class", apiErr.Class.String(), "code", apiErr.Code, "request_id", apiErr.RequestID, "attempt", j.entry.Calls)
		if ctx.Err() != nil && apiErr.RequestID == "" {
			// Shutdown cut the call short before any answer: hand the
			// message back instead of spending an attempt. If the request
			// may have gone out, the next delivery reconciles first.
			if apiErr.Class == submit.ClassAmbiguous {
				j.entry.MaybeCreated = true
			} else {
				j.entry.Uncertain = false
			}
			return p.release(ctx, j, 0)
		}

		var retryReason string
		switch apiErr.Class {
		case submit.ClassThrottled:
			p.RunLimiter.Throttled(ctx)
			j.entry.Uncertain = false
			retryReason = metrics.RetryThrottled
		case submit.ClassTransient:
			j.entry.Uncertain = false
			if apiErr.RequestID == "" {
				p.Pause.ObserveTransportFailure(ctx)
			}
			retryReason = metrics.RetryTransient
		case submit.ClassAmbiguous:
			j.entry.MaybeCreated = true
			retryReason = metrics.RetryAmbiguous
		case submit.ClassSystemic:
			j.entry.Uncertain = false
			p.Metrics.Retry(metrics.RetrySystemic)
			if err := p.Pause.Pause(ctx, pauseReason(apiErr.Code), apiErr.Code); err != nil {
				j.log.Warn("could not set the fleet pause", "error", err)
			}
			if dec, ok := p.put(ctx, j); !ok {
				return dec
			}
			continue // waits for the fleet to resume at the top of the loop
		case submit.ClassPermanent:
			if apiErr.DuplicateName {
				// Our own late original, or a true conflict: only a lookup can tell.
				j.entry.Uncertain = true
				if dec, ok := p.put(ctx, j); !ok {
					return dec
				}
				continue
			}
			j.entry.Uncertain = false
			return p.deadLetter(ctx, j, metrics.DLQPermanentError, failureOf(apiErr))
		default:
			j.entry.MaybeCreated = true
			retryReason = metrics.RetryAmbiguous
		}

		delay, ok := sched.Next()
		j.entry.RetryAttempts = sched.Attempts()
		if !ok {
			if j.entry.Uncertain {
				// One last look before giving up, so a created run group is
				// reported rather than dead-lettered.
				if dec, done := p.reconcile(ctx, j, nil); done {
					return dec
				}
			}
			return p.deadLetter(ctx, j, metrics.DLQRetriesExhausted, failureOf(apiErr))
		}
		p.Metrics.Retry(retryReason)
		if dec, ok := p.put(ctx, j); !ok {
			return dec
		}
		if err := sleep(ctx, delay); err != nil {
			return p.release(ctx, j, delay)
		}
	}
}

// reconcile looks the run group up by Name. done reports that the message's
// fate is decided (dec); otherwise the caller goes on, calling again when
// j.entry.Uncertain was cleared. sched may be nil (no further waiting).
func (p *Processor) reconcile(ctx context.Context, j *job, sched *retry.Schedule) (dec Decision, done bool) {
	if err := p.Pause.WaitResumed(ctx); err != nil {
		return p.release(ctx, j, 0), true
	}
	waited, err := p.DescribeLimiter.Wait(ctx)
	if err != nil {
		return p.release(ctx, j, 0), true
	}
	p.Metrics.RateLimitWait(waited)
	start := p.now()
	groups, err := p.API.FindRunGroupsByName(ctx, j.req.ProjectId, j.req.Name)
	elapsed := p.now().Sub(start)
	if err != nil {
		apiErr := asAPIError(err)
		p.Metrics.APICall("DescribeRunGroups", apiErr.Class.String(), submit.MetricCode(apiErr.Code), elapsed)
		p.Metrics.Reconciled(metrics.ReconcileError)
		j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "reconcile", Outcome: "error", Code: apiErr.Code, RequestID: apiErr.RequestID, Worker: p.Worker})
		if apiErr.Class == submit.ClassSystemic {
			if err := p.Pause.Pause(ctx, pauseReason(apiErr.Code), apiErr.Code); err != nil {
				j.log.Warn("could not set the fleet pause", "error", err)
			}
			return Decision{}, false
		}
		if apiErr.Class == submit.ClassThrottled {
			p.DescribeLimiter.Throttled(ctx)
		}
		if sched == nil {
			return Decision{}, false
		}
		delay, ok := sched.Next()
		j.entry.RetryAttempts = sched.Attempts()
		if !ok {
			return p.deadLetter(ctx, j, metrics.DLQReconcileExhausted, failureOf(apiErr)), true
		}
		if err := sleep(ctx, delay); err != nil {
			return p.release(ctx, j, delay), true
		}
		return Decision{}, false
	}
	p.Metrics.APICall("DescribeRunGroups", "success", "none", elapsed)
	var holder *submit.RunGroup
	for i := range groups {
		g := &groups[i]
		if ownedBy(g, j.req) && j.entry.MaybeCreated {
			p.Metrics.Reconciled(metrics.ReconcileFound)
			j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "reconcile", Outcome: "found", Worker: p.Worker})
			j.log.Info("reconciled: the run group exists", "run_group_id", g.RunGroupId)
			return p.succeed(ctx, j, g.RunGroupId, "", true), true
		}
		holder = g
	}
	if holder != nil {
		p.Metrics.Reconciled(metrics.ReconcileConflict)
		j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "reconcile", Outcome: "conflict", Worker: p.Worker})
		j.entry.Uncertain = false
		return p.deadLetter(ctx, j, metrics.DLQNameConflict, Failure{
			Class: "permanent", Code: "InvalidParameterValue.DuplicateName",
			Message: "the run group name is held by run group " + holder.RunGroupId + ", which this request did not create",
		}), true
	}
	p.Metrics.Reconciled(metrics.ReconcileNotFound)
	j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "reconcile", Outcome: "not_found", Worker: p.Worker})
	j.entry.Uncertain = false
	j.entry.Reconciles++
	if j.entry.Reconciles > p.maxReconciles() {
		return p.deadLetter(ctx, j, metrics.DLQReconcileExhausted, Failure{
			Class: "ambiguous", Code: "ReconcileExhausted",
			Message: "the outcome of earlier calls stayed unknown and no run group with this name was found",
		}), true
	}
	// Resubmitting with the same Name is safe: if the original lands late,
	// this call fails with DuplicateName and the next lookup finds it.
	return Decision{}, false
}

func (p *Processor) maxReconciles() int {
	if p.MaxReconciles > 0 {
		return p.MaxReconciles
	}
	return 5
}

// ownedBy reports whether g is the run group req would create.
func ownedBy(g *submit.RunGroup, req *submit.RunApplicationRequest) bool {
	eq := func(want *string, got string) bool { return want == nil || *want == got }
	return g.Name == req.Name &&
		g.ApplicationId == req.ApplicationId &&
		g.EnvironmentId == req.EnvironmentId &&
		eq(req.ProjectId, g.ProjectId) &&
		eq(req.TableId, g.TableId) &&
		eq(req.Description, g.Description) &&
		eq(req.InputCosUri, g.InputCosUri)
}

func (p *Processor) succeed(ctx context.Context, j *job, runGroupID, requestID string, reconciled bool) Decision {
	now := p.now().UTC()
	j.entry.State = ledger.StateSubmitted
	j.entry.RunGroupID, j.entry.RequestID, j.entry.Reconciled = runGroupID, requestID, reconciled
	j.entry.Uncertain, j.entry.LeaseOwner, j.entry.LeaseUntil = false, "", time.Time{}
	j.entry.SubmittedAt = now
	p.Metrics.LastSuccess(now)
	for {
		_, err := p.Ledger.Put(context.WithoutCancel(ctx), j.entry, j.rev)
		if err == nil {
			break
		}
		// The run group exists whatever happens next; the ledger must say so
		// before the message can go. A conflict means another worker wrote:
		// re-read and write the outcome over the fresh revision.
		if !errors.Is(err, ledger.ErrConflict) {
			p.Metrics.LedgerError()
			j.log.Error("could not record the run group in the ledger", "run_group_id", runGroupID, "error", err)
			// Redelivery reconciles by name and finds the run group.
			return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: metrics.OutcomeError}
		}
		cur, rev, gerr := p.Ledger.Get(context.WithoutCancel(ctx), j.key)
		if gerr != nil {
			return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: metrics.OutcomeError}
		}
		if cur.State == ledger.StateSubmitted {
			j.entry = cur
			break
		}
		if cur.State == ledger.StateDead {
			// Another delivery gave up on the request while this call created
			// its run group: the run group is real, so it is reported too.
			j.log.Error("a run group was created for a request already dead-lettered; publishing its result as well",
				"run_group_id", runGroupID)
		}
		j.rev = rev
	}
	return p.publishResult(ctx, j, metrics.OutcomeSuccess)
}

func (p *Processor) publishResult(ctx context.Context, j *job, outcome string) Decision {
	r := Result{
		Key: j.key, RunGroupID: j.entry.RunGroupID, RequestID: j.entry.RequestID, Attempts: j.entry.Calls,
		Reconciled: j.entry.Reconciled, EnqueuedAt: j.d.Timestamp.UTC(), SubmittedAt: j.entry.SubmittedAt, Worker: p.Worker,
	}
	dup, err := PublishResult(context.WithoutCancel(ctx), p.JS, p.Topology, r)
	if err != nil {
		j.log.Error("could not publish the result", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeError}
	}
	p.Metrics.ResultPublished(dup)
	return Decision{Action: ActionAck, Outcome: outcome}
}

func (p *Processor) deadLetter(ctx context.Context, j *job, reason string, f Failure) Decision {
	ctx = context.WithoutCancel(ctx)
	j.entry.State = ledger.StateDead
	j.entry.DeadSequence = j.d.StreamSeq
	j.entry.LeaseOwner, j.entry.LeaseUntil = "", time.Time{}
	j.entry.Record(ledger.Event{At: p.now().UTC(), Kind: "dead_letter", Outcome: reason, Code: f.Code, Worker: p.Worker})
	if _, err := p.Ledger.Put(ctx, j.entry, j.rev); err != nil {
		p.Metrics.LedgerError()
		j.log.Warn("could not record the dead letter in the ledger", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeError}
	}
	if err := p.publishRecordedDeadLetter(ctx, j, reason, f); err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeError}
	}
	p.Metrics.DeadLettered(reason)
	j.log.Warn("dead-lettered", "reason", reason, "code", f.Code, "request_id", f.RequestID, "attempts", j.entry.Calls)
	return Decision{Action: ActionAck, Outcome: metrics.OutcomeDeadLettered}
}

// republishDeadLetter publishes again the dead letter the ledger records
// for this very message, under the message ID deadLetter used, so JetStream
// drops it if the first publish landed and it lands now if it did not.
func (p *Processor) republishDeadLetter(ctx context.Context, j *job) Decision {
	ctx = context.WithoutCancel(ctx)
	// deadLetter recorded the reason and code as the last event, after the
	// call whose outcome (class) led there.
	reason, f := metrics.DLQMaxDeliveries, Failure{Class: "unknown", Code: "Unknown",
		Message: "rebuilt from the ledger: the worker stopped between recording this dead letter and publishing it"}
	found := false
	for _, ev := range slices.Backward(j.entry.History) {
		if !found && ev.Kind == "dead_letter" {
			reason, f.Code, found = ev.Outcome, ev.Code, true
		} else if found && ev.Kind == "call" {
			f.Class, f.RequestID = ev.Outcome, ev.RequestID
			break
		}
	}
	if err := p.publishRecordedDeadLetter(ctx, j, reason, f); err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeError}
	}
	return Decision{Action: ActionAck, Outcome: metrics.OutcomeDeduplicated}
}

// publishRecordedDeadLetter publishes the dead letter of a request the ledger
// marked dead. Its message ID is derived from the ledger entry alone, so a
// republish after a crash is recognised by JetStream as the same message.
func (p *Processor) publishRecordedDeadLetter(ctx context.Context, j *job, reason string, f Failure) error {
	dl := p.deadLetterBody(j, reason, f)
	dl.Attempts = j.entry.Calls
	dl.History = j.entry.History
	msgID := fmt.Sprintf("%s/%d/%d", j.key, j.d.StreamSeq, j.entry.Calls)
	return PublishDeadLetter(ctx, p.JS, p.Topology, dl, msgID)
}

// deadLetterInvalid dead-letters a request rejected before any API call.
func (p *Processor) deadLetterInvalid(ctx context.Context, j *job, f Failure) Decision {
	dl := p.deadLetterBody(j, metrics.DLQInvalidRequest, f)
	msgID := fmt.Sprintf("%s/%d/invalid", j.key, j.d.StreamSeq)
	if err := PublishDeadLetter(context.WithoutCancel(ctx), p.JS, p.Topology, dl, msgID); err != nil {
		j.log.Error("could not publish the dead letter", "error", err)
		return Decision{Action: ActionNak, Delay: 2 * time.Second, Outcome: metrics.OutcomeError}
	}
	p.Metrics.DeadLettered(metrics.DLQInvalidRequest)
	j.log.Warn("dead-lettered an invalid request", "code", f.Code, "field", f.Field)
	return Decision{Action: ActionAck, Outcome: metrics.OutcomeDeadLettered}
}

func (p *Processor) deadLetterBody(j *job, reason string, f Failure) DeadLetter {
	dl := DeadLetter{
		Key: j.key, Reason: reason, Error: f, Deliveries: j.d.NumDelivered,
		EnqueuedAt: j.d.Timestamp.UTC(), FailedAt: p.now().UTC(), Worker: p.Worker, StreamSequence: j.d.StreamSeq,
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

// put writes the entry with compare-and-set; ok=false carries the decision
// to hand the message back.
func (p *Processor) put(ctx context.Context, j *job) (Decision, bool) {
	rev, err := p.Ledger.Put(context.WithoutCancel(ctx), j.entry, j.rev)
	if err != nil {
		return p.ledgerFailure(ctx, j, err), false
	}
	j.rev = rev
	return Decision{}, true
}

func (p *Processor) ledgerFailure(_ context.Context, j *job, err error) Decision {
	if errors.Is(err, ledger.ErrConflict) {
		// Another delivery of the same request is being worked on.
		j.log.Info("ledger entry changed concurrently; handing the message back")
		return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: metrics.OutcomeReleased}
	}
	p.Metrics.LedgerError()
	j.log.Warn("ledger unavailable; handing the message back", "error", err)
	return Decision{Action: ActionNak, Delay: 5 * time.Second, Outcome: metrics.OutcomeError}
}

// release hands the message back (shutdown, or a wait cut short), keeping
// what the ledger knows. A call cut off mid-flight stays Uncertain, so the
// next delivery reconciles first.
func (p *Processor) release(ctx context.Context, j *job, delay time.Duration) Decision {
	if j.rev != 0 {
		if rev, err := p.Ledger.Put(context.WithoutCancel(ctx), j.entry, j.rev); err == nil {
			j.rev = rev
		}
	}
	return Decision{Action: ActionNak, Delay: delay, Outcome: metrics.OutcomeReleased}
}

// requestKey returns the idempotency key: the Omicsq-Key header, else
// Nats-Msg-Id, else one derived from the request (or, for a body that is not
// a request, from its bytes, so even garbage gets a stable DLQ subject).
func requestKey(h nats.Header, req *submit.RunApplicationRequest, raw []byte) (string, error) {
	for _, name := range []string{HeaderKey, HeaderMsgID} {
		if k := h.Get(name); k != "" {
			if err := ValidateKey(k); err != nil {
				return DeriveKey(raw), err
			}
			return k, nil
		}
	}
	if req != nil {
		if canonical, err := json.Marshal(req); err == nil {
			return DeriveKey(canonical), nil
		}
	}
	return DeriveKey(raw), nil
}

func asAPIError(err error) *submit.Error {
	var apiErr *submit.Error
	if errors.As(err, &apiErr) {
		return apiErr
	}
	return &submit.Error{Class: submit.ClassAmbiguous, Code: "Unknown", Err: err}
}

func failureOf(e *submit.Error) Failure {
	return Failure{Class: e.Class.String(), Code: e.Code, Message: e.Message, RequestID: e.RequestID}
}

// pauseReason maps a systemic error code to a bounded pause reason.
func pauseReason(code string) string {
	switch {
	case strings.HasPrefix(code, "AuthFailure"), code == "ClientError.CredentialError":
		return pause.ReasonAuth
	case strings.HasPrefix(code, "UnauthorizedOperation"), strings.HasPrefix(code, "OperationDenied"),
		code == "IpInBlacklist", code == "IpNotInWhitelist":
		return pause.ReasonPermission
	case strings.HasPrefix(code, "LimitExceeded"):
		return pause.ReasonQuota
	case code == "ClientError.NetworkError":
		return pause.ReasonUnreachable
	default:
		return pause.ReasonConfig
	}
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
