package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StoredDeadLetter is one message of the dead-letter stream.
type StoredDeadLetter struct {
	Sequence uint64
	Subject  string
	Stored   time.Time
	Header   nats.Header
	Data     []byte
	// DeadLetter is the decoded body; nil when the body is not a dead-letter
	// document (Err says why).
	DeadLetter *DeadLetter
	Err        error
	// Key is the request's key, from the body or else the header.
	Key string
}

func newStoredDeadLetter(seq uint64, subject string, stored time.Time, h nats.Header, data []byte) StoredDeadLetter {
	s := StoredDeadLetter{Sequence: seq, Subject: subject, Stored: stored, Header: h, Data: data, Key: h.Get(HeaderKey)}
	d, err := DecodeDeadLetter(data)
	if err == nil {
		s.DeadLetter, s.Key = &d, d.Key
	}
	s.Err = err
	return s
}

// Code is the error code of the failure.
func (s StoredDeadLetter) Code() string {
	if s.DeadLetter != nil && s.DeadLetter.Error.Code != "" {
		return s.DeadLetter.Error.Code
	}
	return s.Header.Get(HeaderErrorCode)
}

// Reason is why the request was dead-lettered.
func (s StoredDeadLetter) Reason() DeadLetterReason {
	if s.DeadLetter != nil {
		return s.DeadLetter.Reason
	}
	return DeadLetterReason(s.Header.Get(HeaderReason))
}

// FailedAt is when the worker gave up (the stored time for an unreadable
// body).
func (s StoredDeadLetter) FailedAt() time.Time {
	if s.DeadLetter != nil && !s.DeadLetter.FailedAt.IsZero() {
		return s.DeadLetter.FailedAt
	}
	return s.Stored
}

// DeadLetterSummary is a stored dead letter in one line: what an operator
// sorts and selects by (enqueue dlq list --json prints one per line).
type DeadLetterSummary struct {
	// Seq is the dead letter's sequence in the dead-letter stream.
	Seq    uint64           `json:"seq"`
	Key    string           `json:"key"`
	Reason DeadLetterReason `json:"reason"`
	Code   string           `json:"code"`
	// Field is the request field the error names, if any.
	Field string `json:"field,omitempty"`
	// FailedAt is StoredDeadLetter.FailedAt, in UTC.
	FailedAt   time.Time `json:"failed_at"`
	Attempts   int       `json:"attempts"`
	Deliveries uint64    `json:"deliveries"`
	// Raw: the original request was not JSON (the dead letter keeps it in
	// RawBase64), so it cannot be edited or re-validated.
	Raw bool `json:"raw,omitempty"`
	// Unreadable: the message is not a dead-letter document (see
	// StoredDeadLetter.Err); Key, Reason and Code come from its headers,
	// FailedAt is when it was stored, Field, Attempts and Deliveries are
	// unknown.
	Unreadable bool `json:"unreadable,omitempty"`
}

// Summary is s in one line.
func (s StoredDeadLetter) Summary() DeadLetterSummary {
	sum := DeadLetterSummary{Seq: s.Sequence, Key: s.Key, Reason: s.Reason(), Code: s.Code(), FailedAt: s.FailedAt().UTC(),
		Unreadable: s.DeadLetter == nil}
	if d := s.DeadLetter; d != nil {
		sum.Field, sum.Attempts, sum.Deliveries = d.Error.Field, d.Attempts, d.Deliveries
		sum.Raw = len(d.Request) == 0
	}
	return sum
}

// DeadLetterFilter selects dead letters; zero fields match everything.
type DeadLetterFilter struct {
	Key    string
	Code   string
	Reason DeadLetterReason
	// FailedFrom and FailedTo bound FailedAt: From inclusive, To exclusive.
	FailedFrom, FailedTo time.Time
}

// Match reports whether s is selected.
func (f DeadLetterFilter) Match(s StoredDeadLetter) bool {
	at := s.FailedAt()
	return (f.Key == "" || s.Key == f.Key) && (f.Code == "" || s.Code() == f.Code) &&
		(f.Reason == "" || s.Reason() == f.Reason) &&
		(f.FailedFrom.IsZero() || !at.Before(f.FailedFrom)) && (f.FailedTo.IsZero() || at.Before(f.FailedTo))
}

// ErrNotFound means no message matched.
var ErrNotFound = errors.New("not found")

// DeadLetters yields, in sequence order, the dead letters f selects among
// those stored when it starts (a filter by key reads that key's subject
// only). Iteration stops at the first error, which is yielded.
func (c *Client) DeadLetters(ctx context.Context, f DeadLetterFilter) iter.Seq2[StoredDeadLetter, error] {
	return func(yield func(StoredDeadLetter, error) bool) {
		s, err := c.js.Stream(ctx, c.topo.DLQStream)
		if err != nil {
			yield(StoredDeadLetter{}, fmt.Errorf("stream %s: %w", c.topo.DLQStream, err))
			return
		}
		subject := c.topo.DLQPrefix + ".>"
		if f.Key != "" {
			subject = c.topo.DLQSubject(f.Key)
		}
		// A subject filter makes the server list every matching subject (one
		// per key): ask for it only for one key's subject.
		var opts []jetstream.StreamInfoOpt
		if f.Key != "" {
			opts = append(opts, jetstream.WithSubjectFilter(subject))
		}
		info, err := s.Info(ctx, opts...)
		if err != nil {
			yield(StoredDeadLetter{}, fmt.Errorf("stream %s: %w", c.topo.DLQStream, err))
			return
		}
		if info.State.Msgs == 0 || (f.Key != "" && len(info.State.Subjects) == 0) {
			return
		}
		for d, err := range c.readDLQ(ctx, s, subject, info.State.LastSeq) {
			if err == nil && !f.Match(d) {
				continue
			}
			if !yield(d, err) || err != nil {
				return
			}
		}
	}
}

// readDLQ reads subject's messages up to last with an ordered consumer.
func (c *Client) readDLQ(ctx context.Context, s jetstream.Stream, subject string, last uint64) iter.Seq2[StoredDeadLetter, error] {
	return func(yield func(StoredDeadLetter, error) bool) {
		fail := func(err error) { yield(StoredDeadLetter{}, fmt.Errorf("read %s: %w", c.topo.DLQStream, err)) }
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
		if err != nil {
			fail(err)
			return
		}
		it, err := cons.Messages()
		if err != nil {
			fail(err)
			return
		}
		defer it.Stop()
		for {
			m, err := it.Next(jetstream.NextMaxWait(2 * time.Second))
			if errors.Is(err, nats.ErrTimeout) {
				return // the rest was deleted meanwhile
			}
			if err != nil {
				fail(err)
				return
			}
			md, err := m.Metadata()
			if err != nil {
				fail(err)
				return
			}
			if md.Sequence.Stream > last {
				return // stored after the scan began
			}
			if !yield(newStoredDeadLetter(md.Sequence.Stream, m.Subject(), md.Timestamp, m.Headers(), m.Data()), nil) {
				return
			}
			if md.NumPending == 0 || md.Sequence.Stream == last {
				return
			}
			if ctx.Err() != nil {
				fail(ctx.Err())
				return
			}
		}
	}
}

// DeadLetterAt returns the dead letter at stream sequence seq (ErrNotFound
// when there is none, or the message there is not a dead letter).
func (c *Client) DeadLetterAt(ctx context.Context, seq uint64) (StoredDeadLetter, error) {
	return c.getDLQ(ctx, func(s jetstream.Stream) (*jetstream.RawStreamMsg, error) { return s.GetMsg(ctx, seq) })
}

// LatestDeadLetter returns key's newest dead letter (ErrNotFound when none).
func (c *Client) LatestDeadLetter(ctx context.Context, key string) (StoredDeadLetter, error) {
	return c.getDLQ(ctx, func(s jetstream.Stream) (*jetstream.RawStreamMsg, error) {
		return s.GetLastMsgForSubject(ctx, c.topo.DLQSubject(key))
	})
}

func (c *Client) getDLQ(ctx context.Context, get func(jetstream.Stream) (*jetstream.RawStreamMsg, error)) (StoredDeadLetter, error) {
	s, err := c.js.Stream(ctx, c.topo.DLQStream)
	if err != nil {
		return StoredDeadLetter{}, fmt.Errorf("stream %s: %w", c.topo.DLQStream, err)
	}
	m, err := get(s)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return StoredDeadLetter{}, ErrNotFound
	}
	if err != nil {
		return StoredDeadLetter{}, fmt.Errorf("read %s: %w", c.topo.DLQStream, err)
	}
	if !strings.HasPrefix(m.Subject, c.topo.DLQPrefix+".") {
		return StoredDeadLetter{}, ErrNotFound
	}
	return newStoredDeadLetter(m.Sequence, m.Subject, m.Time, m.Header, m.Data), nil
}

// ErrNotDeleted wraps the failure to delete a dead letter after its request
// was republished: the redrive happened, the dead letter lingers.
var ErrNotDeleted = errors.New("redriven, but the dead letter was not deleted")

// Redrive republishes body (the dead letter's request, possibly edited, as
// NewRequest returns it) under d's key, then deletes d from the dead-letter
// stream. The key is kept, so the worker's ledger still allows at most one
// run group for it: a body that names another run group than a call already
// made for the key is refused at delivery (ReasonIdentityChanged). The
// message ID is fresh, since the original may be inside the duplicate
// window. Choosing what to redrive (and refusing edits up front) is the
// caller's: see enqueue dlq redrive.
func (c *Client) Redrive(ctx context.Context, d StoredDeadLetter, body []byte) (Published, error) {
	h := nats.Header{}
	h.Set(HeaderRedriveOf, strconv.FormatUint(d.Sequence, 10))
	// The redriven request stays in its batch.
	if b := d.Header.Get(HeaderBatch); b != "" && ValidateBatch(b) == nil {
		h.Set(HeaderBatch, b)
	}
	m, err := c.requestMsg(d.Key, redriveMsgID(d.Key, d.Sequence), body, h)
	if err != nil {
		return Published{}, err
	}
	// Back to the lane and fairness key it came with (a dead letter from
	// before lanes has neither: the bare subject).
	if dl := d.DeadLetter; dl != nil {
		r := Request{Key: d.Key, Body: body, Priority: dl.Priority, FairnessKey: dl.FairnessKey}
		if validateLane(r) == nil {
			c.route(m, r)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ack, err := c.js.PublishMsg(pctx, m)
	if err != nil {
		return Published{}, c.publishError(err)
	}
	p := Published{Key: d.Key, Sequence: ack.Sequence, Duplicate: ack.Duplicate}
	if err := c.DeleteDeadLetter(ctx, d.Sequence); err != nil {
		return p, fmt.Errorf("%w: %w", ErrNotDeleted, err)
	}
	return p, nil
}

// DeleteDeadLetter removes the dead letter at seq.
func (c *Client) DeleteDeadLetter(ctx context.Context, seq uint64) error {
	s, err := c.js.Stream(ctx, c.topo.DLQStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", c.topo.DLQStream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("delete dead letter %d: %w", seq, err)
	}
	return nil
}

// DeadLetterFromMsg reads m, a message of the dead-letter stream delivered
// by a consumer of the caller's own (a console's index, an exporter), as
// the other dead-letter readers do.
func DeadLetterFromMsg(m jetstream.Msg) (StoredDeadLetter, error) {
	md, err := m.Metadata()
	if err != nil {
		return StoredDeadLetter{}, fmt.Errorf("dead letter metadata: %w", err)
	}
	return newStoredDeadLetter(md.Sequence.Stream, m.Subject(), md.Timestamp, m.Headers(), m.Data()), nil
}
