package queue

import (
	"context"
	"errors"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/pause"
)

// The Processor's dependencies, each behind a small interface so that the
// executor can be exercised without a NATS server (see processor_test.go).

// LedgerStore reads and writes ledger entries with compare-and-set;
// *ledger.Ledger is the JetStream KV one.
type LedgerStore interface {
	Get(ctx context.Context, key string) (ledger.Entry, uint64, error)
	Put(ctx context.Context, e ledger.Entry, rev uint64) (uint64, error)
}

// Outbox publishes a request's outcome, and tells whether a request
// message is still queued.
type Outbox interface {
	// PublishResult publishes r once per key; duplicate reports that the
	// key's result was already stored.
	PublishResult(ctx context.Context, r client.Result) (duplicate bool, err error)
	// PublishDeadLetter publishes d; msgID makes a retried publish a no-op.
	PublishDeadLetter(ctx context.Context, d client.DeadLetter, msgID string) error
	// Queued reports whether the request message seq is still in the
	// requests stream.
	Queued(ctx context.Context, seq uint64) (bool, error)
}

// Pauser is the fleet-wide pause; *pause.Controller is the KV one.
type Pauser interface {
	WaitResumed(ctx context.Context) error
	// WaitLookup returns when lookups may go out (not paused, or paused for
	// a reason that does not refuse them).
	WaitLookup(ctx context.Context) error
	// WaitTurn is WaitResumed for a caller about to call RunApplication; it
	// also returns (trial true) when the fleet is paused in a trial and this
	// caller won it, and must then be told the outcome with EndTrial.
	WaitTurn(ctx context.Context, owner string) (trial bool, err error)
	EndTrial(ctx context.Context, owner string, o pause.Outcome) error
	// Pause sets the fleet-wide pause; first reports that this call paused
	// a fleet that was not paused.
	Pause(ctx context.Context, reason pause.Reason, code string) (first bool, err error)
	ObserveSuccess()
	ObserveTransportFailure(ctx context.Context)
}

// Breaker is the fleet-wide resource breaker; *breaker.Breaker is the KV
// one. Nil turns it off.
type Breaker interface {
	// Failed records that key was rejected with code for r, and reports
	// whether r's breaker is open now.
	Failed(ctx context.Context, r breaker.Resource, code, key string) (open bool, err error)
	// Check returns the first trip among rs that is not closed.
	Check(ctx context.Context, rs []breaker.Resource) (breaker.Trip, bool, error)
}

// BatchGate is the workers' side of batches; *batch.Gate is the KV one.
// Nil turns it off.
type BatchGate interface {
	// Cancelled reports, from memory, whether batch id was cancelled.
	Cancelled(ctx context.Context, id string) bool
	// DeadLettered records key's dead letter in its batch's member record.
	DeadLettered(ctx context.Context, id, key string, reason client.DeadLetterReason) error
}

// JetStreamOutbox is the Outbox over the topology's streams.
type JetStreamOutbox struct {
	JS       jetstream.JetStream
	Topology Topology

	mu     sync.Mutex
	stream jetstream.Stream
}

// PublishResult implements Outbox.
func (o *JetStreamOutbox) PublishResult(ctx context.Context, r client.Result) (bool, error) {
	return PublishResult(ctx, o.JS, o.Topology, r)
}

// PublishDeadLetter implements Outbox.
func (o *JetStreamOutbox) PublishDeadLetter(ctx context.Context, d client.DeadLetter, msgID string) error {
	return PublishDeadLetter(ctx, o.JS, o.Topology, d, msgID)
}

// Queued implements Outbox: the requests stream is a work queue, so an
// acked or dead-lettered message is gone.
func (o *JetStreamOutbox) Queued(ctx context.Context, seq uint64) (bool, error) {
	o.mu.Lock()
	if o.stream == nil {
		s, err := o.JS.Stream(ctx, o.Topology.RequestsStream)
		if err != nil {
			o.mu.Unlock()
			return false, fmt.Errorf("bind stream %s: %w", o.Topology.RequestsStream, err)
		}
		o.stream = s
	}
	s := o.stream
	o.mu.Unlock()
	_, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}
