package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/keys"
)

// A batch is a set of requests published together (one enqueue run of a
// sample sheet, or any set a producer names with HeaderBatch). Its durable
// record lives in the batches bucket (Topology.BatchesBucket): the record
// (BatchRecord) under BatchToken(id), and one BatchMember per request under
// <batch token>.m.<key token>. The run tracker keeps the members current
// and publishes one BatchCompleted once every member is terminal.
// docs/lifecycle.md ("Batches") is the contract.

// HeaderBatch carries the batch ID on requests, and the worker copies it
// onto the key's result and dead letters. Optional.
const HeaderBatch = "Omicsq-Batch"

// MaxBatchBytes bounds a batch ID.
const MaxBatchBytes = keys.MaxBatchBytes

// ValidateBatch reports whether id can name a batch: 1 to MaxBatchBytes
// (128) bytes of printable UTF-8 without spaces. The error never repeats
// the ID.
func ValidateBatch(id string) error { return keys.ValidateBatch(id) }

// BatchToken maps a batch ID to the token that names it in the batches
// bucket and in the batch's status subject: the scheme of KeyToken.
func BatchToken(id string) string { return keys.Token(id) }

// BatchRecord is a batch's record in the batches bucket.
type BatchRecord struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	// Members is the number of requests RegisterBatch registered; 0 for a
	// batch only seen through its header (its size is unknown, so it gets
	// no BatchCompleted).
	Members int `json:"members"`
	// CancelledAt is set by CancelBatch: workers refuse the batch's
	// requests not yet submitted and the tracker terminates its running
	// groups.
	CancelledAt *time.Time `json:"cancelled_at,omitempty"`
	// CompletedAt is when the tracker published BatchCompleted.
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// BatchMember is one request of a batch, as the batches bucket holds it.
type BatchMember struct {
	Key string `json:"key"`
	// Location is where the producer read the request (a sample sheet's
	// "samples.csv:row12"); empty for a member only seen through its header.
	Location string `json:"location,omitempty"`
	// RunGroupID and Status are the key's current run group and its status
	// as the tracker last saw it; Terminal that the member is done (its
	// group ended, or it was dead-lettered).
	RunGroupID string `json:"run_group_id,omitempty"`
	Status     string `json:"status,omitempty"`
	Terminal   bool   `json:"terminal"`
	// DeadLettered and Reason: the request ended in the dead-letter queue
	// without a run group.
	DeadLettered bool             `json:"dead_lettered,omitempty"`
	Reason       DeadLetterReason `json:"reason,omitempty"`
	// ErrorMessage is the API's explanation of a failed group. It may quote
	// inputs: never log it.
	ErrorMessage string     `json:"error_message,omitempty"`
	SubmittedAt  *time.Time `json:"submitted_at,omitempty"`
	UpdatedAt    time.Time  `json:"updated_at"`
}

// Outcome words of a terminal member, as BatchCompleted counts them.
const (
	BatchSucceeded    = "succeeded"
	BatchFailed       = "failed"
	BatchDeadLettered = "dead_lettered"
	BatchCancelled    = "cancelled"
)

// Outcome says how a terminal member ended: BatchSucceeded, BatchFailed,
// BatchDeadLettered or BatchCancelled (refused as ReasonBatchCancelled, or
// its group Terminated); "" while it is not terminal.
func (m BatchMember) Outcome() string {
	switch {
	case !m.Terminal:
		return ""
	case m.DeadLettered && m.Reason == ReasonBatchCancelled:
		return BatchCancelled
	case m.DeadLettered:
		return BatchDeadLettered
	case IsTerminalStatus(m.Status) && !IsFailedStatus(m.Status):
		return BatchSucceeded
	case strings.EqualFold(m.Status, "Terminated"):
		return BatchCancelled
	}
	return BatchFailed
}

// BatchCompleted is published once per batch, when every registered member
// is terminal, to BatchSubject(id) with Nats-Msg-Id BatchCompletedMsgID(id).
type BatchCompleted struct {
	ID           string `json:"id"`
	Members      int    `json:"members"`
	Succeeded    int    `json:"succeeded"`
	Failed       int    `json:"failed"`
	DeadLettered int    `json:"dead_lettered"`
	Cancelled    int    `json:"cancelled"`
	// FirstSubmit is the earliest submission among the members (none if no
	// member was submitted).
	FirstSubmit *time.Time `json:"first_submit,omitempty"`
	CompletedAt time.Time  `json:"completed_at"`
}

// BatchSubject is the subject of a batch's completion event:
// <status prefix>.batch.<batch token>. Its second token is the word batch,
// never a 32-hex key token, so it cannot fall under a key's subjects
// (<prefix>.<key token>.>) whatever the batch ID.
func (t Topology) BatchSubject(id string) string { return t.StatusPrefix + ".batch." + BatchToken(id) }

// BatchCompletedMsgID is the de-duplication ID of a batch's completion
// event.
func BatchCompletedMsgID(id string) string { return "batch/" + BatchToken(id) + "/complete" }

// BatchCounts tallies members by outcome.
type BatchCounts struct {
	Members, Terminal                          int
	Succeeded, Failed, DeadLettered, Cancelled int
	Submitted                                  int // members with a run group
	FirstSubmit                                *time.Time
}

// CountBatch tallies ms.
func CountBatch(ms []BatchMember) BatchCounts {
	var c BatchCounts
	for _, m := range ms {
		c.Members++
		if m.RunGroupID != "" {
			c.Submitted++
		}
		if m.SubmittedAt != nil && (c.FirstSubmit == nil || m.SubmittedAt.Before(*c.FirstSubmit)) {
			t := *m.SubmittedAt
			c.FirstSubmit = &t
		}
		if !m.Terminal {
			continue
		}
		c.Terminal++
		switch m.Outcome() {
		case BatchSucceeded:
			c.Succeeded++
		case BatchFailed:
			c.Failed++
		case BatchDeadLettered:
			c.DeadLettered++
		case BatchCancelled:
			c.Cancelled++
		}
	}
	return c
}

// ErrBatchNotFound means the batches bucket holds nothing of a batch.
var ErrBatchNotFound = errors.New("batch not found")

func (c *Client) batches(ctx context.Context) (jetstream.KeyValue, error) {
	if c.topo.BatchesBucket == "" {
		return nil, errors.New("no batches bucket is configured")
	}
	kv, err := c.js.KeyValue(ctx, c.topo.BatchesBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", c.topo.BatchesBucket, err)
	}
	return kv, nil
}

// RegisterBatch writes the record of batch id with members, before their
// requests are published: the record first, then every member, up to the
// publish window at a time. Registering again with the same members is a
// no-op for the members already there (they are created, never
// overwritten, so their progress stands); a record registered with another
// number of members is an error, except one the tracker made for a batch
// seen only through its header, which takes the size.
func (c *Client) RegisterBatch(ctx context.Context, id string, members []BatchMember) error {
	if err := ValidateBatch(id); err != nil {
		return err
	}
	members, err := distinctMembers(members)
	if err != nil {
		return err
	}
	kv, err := c.batches(ctx)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	rec := BatchRecord{ID: id, CreatedAt: now, Members: len(members)}
	b, _ := json.Marshal(rec)
	if _, err := kv.Create(ctx, keys.BatchMeta(id), b); errors.Is(err, jetstream.ErrKeyExists) {
		if err := c.reregister(ctx, kv, id, len(members)); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("register batch: %w", err)
	}
	// The members go out as asynchronous creates (a publish that expects
	// no earlier value of its key): one round trip each would make a
	// 10,000-row sheet wait for seconds.
	// The bucket's own put subject: KeyValue.Create publishes there with
	// the same expectation.
	prefix := "$KV." + c.topo.BatchesBucket + "."
	pending := make([]jetstream.PubAckFuture, 0, c.window)
	settle := func() error {
		f := pending[0]
		pending = pending[1:]
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			if wrongLastSequence(err) {
				return nil // registered before
			}
			return fmt.Errorf("register batch member: %w", err)
		case <-t.C:
			return fmt.Errorf("register batch member: no acknowledgement within %v", c.timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var firstErr error
	for _, m := range members {
		if len(pending) == c.window {
			if firstErr = settle(); firstErr != nil {
				break
			}
		}
		m.Terminal, m.UpdatedAt = false, now
		body, _ := json.Marshal(m)
		msg := nats.NewMsg(prefix + keys.BatchMember(id, m.Key))
		msg.Data = body
		f, err := c.js.PublishMsgAsync(msg, jetstream.WithExpectLastSequencePerSubject(0))
		if err != nil {
			firstErr = fmt.Errorf("register batch member: %w", err)
			break
		}
		pending = append(pending, f)
	}
	for len(pending) > 0 {
		if err := settle(); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// distinctMembers checks every key before anything is written (a record
// whose size counts a member that can never be written would never
// complete) and keeps the first member of each key: a sheet may repeat a
// row exactly, and the key is one request, one member.
func distinctMembers(ms []BatchMember) ([]BatchMember, error) {
	seen := make(map[string]bool, len(ms))
	out := ms[:0:0]
	for _, m := range ms {
		if err := ValidateKey(m.Key); err != nil {
			return nil, &InvalidRequestError{Code: CodeInvalidKey, Field: "key", Reason: err.Error()}
		}
		if !seen[m.Key] {
			seen[m.Key] = true
			out = append(out, m)
		}
	}
	return out, nil
}

// reregister checks an existing record against a registration of n
// members. A record the tracker made for a batch seen through its header
// (Members 0) takes the size (compare-and-set); another size is an error.
func (c *Client) reregister(ctx context.Context, kv jetstream.KeyValue, id string, n int) error {
	for range 10 {
		e, err := kv.Get(ctx, keys.BatchMeta(id))
		if err != nil {
			return fmt.Errorf("register batch: %w", err)
		}
		var rec BatchRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return fmt.Errorf("decode batch record: %w", err)
		}
		switch {
		case rec.CancelledAt != nil:
			return errors.New("batch was cancelled: its requests would all be refused; register another batch ID")
		case rec.CompletedAt != nil:
			return errors.New("batch is complete already: register another batch ID")
		case rec.Members == n:
			return nil
		case rec.Members != 0:
			return fmt.Errorf("batch is registered already with %d members, not %d", rec.Members, n)
		}
		rec.Members = n
		b, _ := json.Marshal(rec)
		if _, err := kv.Update(ctx, keys.BatchMeta(id), b, e.Revision()); err == nil {
			return nil
		} else if !isKVConflict(err) {
			return fmt.Errorf("register batch: %w", err)
		}
	}
	return errors.New("register batch: the record kept changing")
}

func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (c *Client) batchRecord(ctx context.Context, kv jetstream.KeyValue, id string) (BatchRecord, error) {
	e, err := kv.Get(ctx, keys.BatchMeta(id))
	if err != nil {
		return BatchRecord{}, err
	}
	var rec BatchRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return BatchRecord{}, fmt.Errorf("decode batch record: %w", err)
	}
	return rec, nil
}

// Batch reads batch id's record and members (in no set order). A batch
// seen only through its header may have members and no record yet: the
// record is then the zero one but for ID. ErrBatchNotFound when neither
// exists.
func (c *Client) Batch(ctx context.Context, id string) (BatchRecord, []BatchMember, error) {
	kv, err := c.batches(ctx)
	if err != nil {
		return BatchRecord{}, nil, err
	}
	rec, err := c.batchRecord(ctx, kv, id)
	found := err == nil
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		rec = BatchRecord{ID: id}
	case err != nil:
		return BatchRecord{}, nil, fmt.Errorf("read batch record: %w", err)
	}
	ms, err := ListBatchMembers(ctx, kv, id)
	if err != nil {
		return rec, nil, err
	}
	if !found && len(ms) == 0 {
		return rec, nil, ErrBatchNotFound
	}
	return rec, ms, nil
}

// ListBatchMembers reads every member record of batch id from kv (the
// batches bucket) through one watch of their keys, which streams them
// rather than asking for each.
func ListBatchMembers(ctx context.Context, kv jetstream.KeyValue, id string) ([]BatchMember, error) {
	w, err := kv.Watch(ctx, keys.BatchMembers(id), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list batch members: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []BatchMember
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("list batch members: the watch ended")
			}
			if e == nil {
				return out, nil
			}
			var m BatchMember
			if err := json.Unmarshal(e.Value(), &m); err != nil {
				return nil, fmt.Errorf("decode batch member: %w", err)
			}
			out = append(out, m)
		}
	}
}

// CancelBatch marks batch id cancelled (a compare-and-set of its record,
// created if only its header was seen so far) and returns the record. A
// batch cancelled already keeps its first CancelledAt.
func (c *Client) CancelBatch(ctx context.Context, id string) (BatchRecord, error) {
	if err := ValidateBatch(id); err != nil {
		return BatchRecord{}, err
	}
	kv, err := c.batches(ctx)
	if err != nil {
		return BatchRecord{}, err
	}
	for range 10 {
		now := time.Now().UTC()
		e, err := kv.Get(ctx, keys.BatchMeta(id))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			ms, lerr := ListBatchMembers(ctx, kv, id)
			if lerr != nil {
				return BatchRecord{}, lerr
			}
			if len(ms) == 0 {
				return BatchRecord{}, ErrBatchNotFound
			}
			rec := BatchRecord{ID: id, CreatedAt: now, CancelledAt: &now}
			b, _ := json.Marshal(rec)
			if _, err := kv.Create(ctx, keys.BatchMeta(id), b); err == nil {
				return rec, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return BatchRecord{}, fmt.Errorf("cancel batch: %w", err)
			}
			continue
		}
		if err != nil {
			return BatchRecord{}, fmt.Errorf("cancel batch: %w", err)
		}
		var rec BatchRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return BatchRecord{}, fmt.Errorf("decode batch record: %w", err)
		}
		if rec.CancelledAt != nil {
			return rec, nil
		}
		rec.CancelledAt = &now
		b, _ := json.Marshal(rec)
		if _, err := kv.Update(ctx, keys.BatchMeta(id), b, e.Revision()); err == nil {
			return rec, nil
		} else if !isKVConflict(err) {
			return BatchRecord{}, fmt.Errorf("cancel batch: %w", err)
		}
	}
	return BatchRecord{}, errors.New("cancel batch: the record kept changing")
}

// isKVConflict reports a compare-and-set that lost to another writer.
func isKVConflict(err error) bool {
	return wrongLastSequence(err) || errors.Is(err, jetstream.ErrKeyExists)
}
