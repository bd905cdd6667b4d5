// Package ledger is the submission ledger: one JetStream KV entry per request
// idempotency key, recording the intent to call RunApplication before each
// call and the outcome after it. RunApplication has no idempotency token; the
// ledger is what lets a redelivered message know whether a run group may
// already exist, and so whether it must reconcile by name before calling.
package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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

// Event is one step in a request's history.
type Event struct {
	At        time.Time `json:"at"`
	Kind      string    `json:"kind"` // call, reconcile, dead_letter, redrive
	Outcome   string    `json:"outcome"`
	Code      string    `json:"code,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	Worker    string    `json:"worker,omitempty"`
}

// Entry is the ledger record of one request.
type Entry struct {
	Key   string `json:"key"`
	State State  `json:"state"`
	// Calls counts RunApplication calls made for the request, ever.
	Calls int `json:"calls"`
	// RetryAttempts counts attempts that ended in a retryable failure since
	// the request was last (re)started; it drives the retry bounds.
	RetryAttempts int       `json:"retry_attempts"`
	FirstCallAt   time.Time `json:"first_call_at,omitempty"`
	// Uncertain is true while a call may have created a run group that has
	// not been found yet: set before every call (the intent), cleared by a
	// definite answer or by a reconciliation that found nothing.
	Uncertain bool `json:"uncertain"`
	// MaybeCreated is true once any call's outcome was unknown. It stays set:
	// a later DuplicateName may then be our own late original.
	MaybeCreated bool `json:"maybe_created"`
	// LeaseOwner and LeaseUntil name the worker whose call may be in flight.
	// Another worker that finds the entry Uncertain waits for the lease to
	// end before reconciling, so it never races a call that is still open.
	LeaseOwner string    `json:"lease_owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitempty"`
	// Reconciles counts reconciliation cycles that found nothing.
	Reconciles int    `json:"reconciles"`
	RunGroupID string `json:"run_group_id,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	Reconciled bool   `json:"reconciled,omitempty"`
	// DeadSequence is the requests-stream sequence of the message that was
	// dead-lettered, so its own redelivery is recognised.
	DeadSequence uint64    `json:"dead_sequence,omitempty"`
	SubmittedAt  time.Time `json:"submitted_at,omitempty"`
	UpdatedAt    time.Time `json:"updated_at"`
	History      []Event   `json:"history,omitempty"`
}

// Record appends e to the history, dropping the oldest events past the bound.
func (e *Entry) Record(ev Event) {
	e.History = append(e.History, ev)
	if n := len(e.History); n > maxHistory {
		e.History = append(e.History[:0], e.History[n-maxHistory:]...)
	}
}

// ErrConflict means another worker changed the entry since it was read.
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

func kvKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

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
