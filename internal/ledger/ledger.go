// Package ledger is the submission ledger: one JetStream KV entry per request
// idempotency key. RunApplication has no idempotency token; the ledger is
// what lets any delivery of a request know whether a run group may already
// exist, who may be calling for it right now, and which request it is.
//
// The entry owns its transitions (transitions.go): callers say what happened
// (a call began, a call settled, a lookup answered, the request died or was
// redriven) and the entry keeps its fields consistent. The decisions made on
// top of an entry live in internal/submission.
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/keys"
)

// State is where a request stands.
type State string

// States of an entry.
const (
	// StatePending: the request is being worked on, or was, without a final
	// outcome yet.
	StatePending State = "pending"
	// StateSubmitted: a run group exists for the request (RunGroupID).
	StateSubmitted State = "submitted"
	// StateDead: the request was dead-lettered; a redrive may revive it.
	StateDead State = "dead"
)

// maxHistory bounds the events kept per entry so an entry stays small however
// often a request is retried.
const maxHistory = 32

// Identity pins which request a key stands for, without holding any input:
// digests only, so the ledger bucket never stores a Name or a sample
// identifier. It is written at the first intent to call.
type Identity struct {
	// NameDigest and ProjectDigest are digests of the Name and of the
	// ProjectId as sent ("" for none: the region's default project).
	NameDigest    string `json:"name"`
	ProjectDigest string `json:"project"`
	// Fingerprint is a digest of the whole request in canonical form.
	Fingerprint string `json:"fingerprint"`
	// PinnedAt is when the first call was about to be made; a run group
	// created before it (minus clock skew) is not this request's.
	PinnedAt time.Time `json:"pinned_at"`
}

// Same reports whether two identities name the same request.
func (id Identity) Same(o Identity) bool {
	return id.NameDigest == o.NameDigest && id.ProjectDigest == o.ProjectDigest && id.Fingerprint == o.Fingerprint
}

// Differences names what differs between two identities: "Name", "ProjectId"
// or "request" (any other field).
func (id Identity) Differences(o Identity) string {
	switch {
	case id.NameDigest != o.NameDigest:
		return "Name"
	case id.ProjectDigest != o.ProjectDigest:
		return "ProjectId"
	case id.Fingerprint != o.Fingerprint:
		return "request"
	}
	return ""
}

// Pending is what a request is waiting to resolve after its last call.
type Pending string

// Pending values.
const (
	// PendingNone: nothing to resolve; the next step is a call (after a
	// lookup if a run group may exist).
	PendingNone Pending = ""
	// PendingAmbiguous: the last call's outcome is unknown.
	PendingAmbiguous Pending = "ambiguous"
	// PendingDuplicate: the last call was answered DuplicateName; the holder
	// of the Name must be found.
	PendingDuplicate Pending = "duplicate"
	// PendingPermanent: the last call was rejected for good, but an earlier
	// call may have created the run group; it is looked for until the
	// horizon before the rejection is reported.
	PendingPermanent Pending = "permanent"
	// PendingExhausted: the retry budget is spent; a run group that may
	// exist is looked for until the horizon before the request is given up.
	PendingExhausted Pending = "exhausted"
	// PendingGivingUp: the delivery budget is spent (a crash loop); a run
	// group that may exist is looked for until the horizon, then the
	// request is dead-lettered as max_deliveries.
	PendingGivingUp Pending = "giving_up"
)

// InFlight is a RunApplication call that was started and whose answer has
// not been recorded. Until Deadline it may still be open; after it, its
// outcome is unknown.
type InFlight struct {
	Owner    string    `json:"owner"`
	Since    time.Time `json:"since"`
	Deadline time.Time `json:"deadline"`
}

// Entry is the ledger record of one request.
type Entry struct {
	Key   string `json:"key"`
	State State  `json:"state"`
	// Identity is pinned at the first intent (nil before any call).
	Identity *Identity `json:"identity,omitempty"`
	// Calls counts RunApplication calls started for the request, ever.
	Calls int `json:"calls"`
	// MaybeCreated is true once any call's outcome was not a definite
	// rejection. It never goes back: from then on every call is preceded
	// by a fresh lookup, the identity is frozen, and a DuplicateName may be
	// our own run group.
	MaybeCreated bool `json:"maybe_created"`
	// NeedsLookup is true while a lookup by Name must come before anything
	// else. (Stored under the name earlier versions used for the same
	// promise.)
	NeedsLookup bool `json:"uncertain"`
	// Pending is what the last call left to resolve.
	Pending Pending `json:"pending,omitempty"`
	// PendingCode and PendingRequestID are the last call's error code and
	// RequestId, reported if the request ends as a dead letter.
	PendingCode      string `json:"pending_code,omitempty"`
	PendingRequestID string `json:"pending_request_id,omitempty"`
	// HorizonUntil: before it, a lookup that finds nothing after a
	// DuplicateName or a late rejection is repeated, because the run group
	// may exist and not be visible yet.
	HorizonUntil time.Time `json:"horizon_until,omitempty"`
	// Lookups counts lookups since the last call (their delays grow).
	Lookups int `json:"lookups,omitempty"`
	// NotBefore delays the next step (a retry backoff or a lookup delay).
	NotBefore time.Time `json:"not_before,omitempty"`
	// InFlight is the call started and not yet settled, if any.
	InFlight *InFlight `json:"in_flight,omitempty"`
	// Driver is the requests-stream sequence of the message that carries
	// the key to its outcome. Another message of the same key (a resend
	// after the de-duplication window) defers to it while it exists.
	Driver uint64 `json:"driver,omitempty"`
	// LeaseOwner and LeaseUntil name the handler that holds the key: while
	// the lease is live, no other delivery may act on the key.
	LeaseOwner string    `json:"lease_owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitempty"`
	// RetryAttempts counts retryable failures since the request was last
	// (re)started; RetryActive sums the delays they cost. Time spent paused
	// or queued is not counted: the budget is for active retrying.
	RetryAttempts int           `json:"retry_attempts"`
	RetryActive   time.Duration `json:"retry_active_ns,omitempty"`
	// Throttles counts throttled calls; they are retried without a budget
	// (the limiter adapts), only their delays grow.
	Throttles int `json:"throttles,omitempty"`
	// PauseStrikes counts the fleet pauses this request's own calls caused
	// outside a trial: a request that keeps pausing the fleet while others
	// go through is parked in the DLQ instead of pausing it forever.
	PauseStrikes int `json:"pause_strikes,omitempty"`
	// Edits are an operator's edits of resource fields (a breaker release)
	// that the key's request is submitted with: every delivery applies them
	// again, so the pinned identity is the edited request's.
	Edits map[string]string `json:"edits,omitempty"`
	// BreakerRelease names the breaker trip whose release was applied; a
	// rejection after it is dead-lettered, not held again.
	BreakerRelease string `json:"breaker_release,omitempty"`
	// Releases counts deliveries the worker handed back on purpose (a
	// wait, a lease held elsewhere, a shutdown); deliveries beyond them are
	// crashes or losses, which the delivery budget bounds.
	Releases uint64 `json:"releases,omitempty"`

	RunGroupID string `json:"run_group_id,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	Reconciled bool   `json:"reconciled,omitempty"`
	// DeadSequence is the requests-stream sequence of the message that was
	// dead-lettered, so its own redelivery is recognised.
	DeadSequence uint64         `json:"dead_sequence,omitempty"`
	SubmittedAt  time.Time      `json:"submitted_at,omitempty"`
	UpdatedAt    time.Time      `json:"updated_at"`
	History      []client.Event `json:"history,omitempty"`
}

// Record appends e to the history, dropping the oldest events past the bound.
func (e *Entry) Record(ev client.Event) {
	e.History = append(e.History, ev)
	if n := len(e.History); n > maxHistory {
		e.History = append(e.History[:0], e.History[n-maxHistory:]...)
	}
}

// ErrConflict means another writer changed the entry since it was read.
var ErrConflict = errors.New("ledger: entry changed concurrently")

// Ledger reads and writes entries with compare-and-set.
type Ledger struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// New returns a ledger over an existing KV bucket.
func New(kv jetstream.KeyValue) *Ledger { return &Ledger{kv: kv, now: time.Now} }

// Open binds the named bucket.
func Open(ctx context.Context, js jetstream.JetStream, bucket string) (*Ledger, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("ledger: bind bucket %s: %w", bucket, err)
	}
	return New(kv), nil
}

// kvKey is the key's token: the same one that names its result and dead
// letter subjects.
func kvKey(key string) string { return keys.Token(key) }

// Get returns key's entry and its revision. A key never seen returns a fresh
// pending entry with revision 0.
func (l *Ledger) Get(ctx context.Context, key string) (Entry, uint64, error) {
	kve, err := l.kv.Get(ctx, kvKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{Key: key, State: StatePending}, 0, nil
	}
	if err != nil {
		return Entry{}, 0, fmt.Errorf("ledger: get: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		return Entry{}, 0, fmt.Errorf("ledger: decode entry: %w", err)
	}
	return e, kve.Revision(), nil
}

// Put writes e if the stored entry is still at revision rev (0: absent) and
// returns the new revision. ErrConflict means someone else wrote first.
func (l *Ledger) Put(ctx context.Context, e Entry, rev uint64) (uint64, error) {
	e.UpdatedAt = l.now().UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("ledger: encode entry: %w", err)
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = l.kv.Create(ctx, kvKey(e.Key), b)
	} else {
		newRev, err = l.kv.Update(ctx, kvKey(e.Key), b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, ErrConflict
	}
	if err != nil {
		return 0, fmt.Errorf("ledger: put: %w", err)
	}
	return newRev, nil
}
