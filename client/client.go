package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Client publishes run requests and reads their outcomes over JetStream. It
// holds no state of its own beyond its settings and is safe for concurrent
// use. The streams must exist (the workers create them).
type Client struct {
	js      jetstream.JetStream
	topo    Topology
	window  int
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTopology sets the stream and subject names (default DefaultTopology).
func WithTopology(t Topology) Option { return func(c *Client) { c.topo = t } }

// WithPublishWindow bounds the publishes PublishBatch keeps awaiting their
// acknowledgement (default 256): the back-pressure that keeps a large sample
// sheet from outrunning the server.
func WithPublishWindow(n int) Option {
	return func(c *Client) {
		if n > 0 {
			c.window = n
		}
	}
}

// WithPublishTimeout bounds how long one publish waits for its
// acknowledgement (default 10s).
func WithPublishTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// New returns a Client over js. Create js with
// jetstream.WithPublishAsyncTimeout (e.g. the publish timeout), so an
// acknowledgement that never arrives does not stay pending in js forever.
func New(js jetstream.JetStream, opts ...Option) *Client {
	c := &Client{js: js, topo: DefaultTopology(), window: 256, timeout: 10 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Topology returns the names the client uses.
func (c *Client) Topology() Topology { return c.topo }

// Published is the server's acknowledgement of one request.
type Published struct {
	Key string
	// Sequence is the request's sequence in the requests stream.
	Sequence uint64
	// Duplicate is true when the server dropped the request because the same
	// key was published within the stream's duplicate window. It is not an
	// error: the first publish stands.
	Duplicate bool
}

// ErrNoStream means no stream stores the requests subject: the workers have
// not created the streams yet, or the subject is misconfigured.
var ErrNoStream = errors.New("no stream stores the requests subject (is a worker running? it creates the streams)")

// Publish publishes one request under its key. Nats-Msg-Id is the key, so
// publishing the same key again within the duplicate window is dropped by
// the server, and beyond it the worker's ledger still prevents a second run.
func (c *Client) Publish(ctx context.Context, r Request) (Published, error) {
	m, err := c.laneMsg(r)
	if err != nil {
		return Published{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ack, err := c.js.PublishMsg(pctx, m)
	if err != nil {
		return Published{}, c.publishError(err)
	}
	return Published{Key: r.Key, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// BatchError reports the first request of a batch whose publish was not
// acknowledged. Every request before Index was published; Index and up to
// the publish window after it may have been too (they were in flight when
// the batch stopped), and publishing the batch again is safe.
type BatchError struct {
	Index int
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("request %d: %v", e.Index, e.Err) }
func (e *BatchError) Unwrap() error { return e.Err }

// PublishBatch publishes rs in order, keeping at most the publish window
// awaiting acknowledgement, and returns one Published per request. It stops
// at the first failure and returns the acknowledged prefix with a
// *BatchError.
func (c *Client) PublishBatch(ctx context.Context, rs []Request) ([]Published, error) {
	out := make([]Published, 0, len(rs))
	pending := make([]jetstream.PubAckFuture, 0, c.window)
	// settle waits for the oldest in-flight publish.
	settle := func() error {
		f := pending[0]
		pending = pending[1:]
		i := len(out)
		// An answer already there wins over a cancelled context, so an
		// acknowledged request is never reported as not published.
		select {
		case ack := <-f.Ok():
			out = append(out, Published{Key: rs[i].Key, Sequence: ack.Sequence, Duplicate: ack.Duplicate})
			return nil
		case err := <-f.Err():
			return &BatchError{Index: i, Err: c.publishError(err)}
		default:
		}
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		select {
		case ack := <-f.Ok():
			out = append(out, Published{Key: rs[i].Key, Sequence: ack.Sequence, Duplicate: ack.Duplicate})
			return nil
		case err := <-f.Err():
			return &BatchError{Index: i, Err: c.publishError(err)}
		case <-t.C:
			return &BatchError{Index: i, Err: fmt.Errorf("publish: no acknowledgement within %v", c.timeout)}
		case <-ctx.Done():
			return &BatchError{Index: i, Err: ctx.Err()}
		}
	}
	for i, r := range rs {
		if len(pending) == c.window {
			if err := settle(); err != nil {
				return out, err
			}
		}
		m, err := c.laneMsg(r)
		if err == nil {
			err = ctx.Err() // publish nothing more once cancelled
		}
		if err == nil {
			var f jetstream.PubAckFuture
			if f, err = c.js.PublishMsgAsync(m); err == nil {
				pending = append(pending, f)
				continue
			}
		}
		for len(pending) > 0 { // acknowledge what went out before i
			if serr := settle(); serr != nil {
				return out, serr
			}
		}
		return out, &BatchError{Index: i, Err: err}
	}
	for len(pending) > 0 {
		if err := settle(); err != nil {
			return out, err
		}
	}
	return out, nil
}

// laneMsg is r's message on its lane's subject, with the lane headers.
func (c *Client) laneMsg(r Request) (*nats.Msg, error) {
	if err := validateLane(r); err != nil {
		return nil, err
	}
	m, err := c.requestMsg(r.Key, r.Key, r.Body, batchHeader(r.Batch))
	if err != nil {
		return nil, err
	}
	c.route(m, r)
	return m, nil
}

// route addresses m to r's flow: its subject, and the lane headers for
// readers of the stream.
func (c *Client) route(m *nats.Msg, r Request) {
	m.Subject = c.subject(r)
	if m.Subject != c.topo.RequestsSubject {
		m.Header.Set(HeaderPriority, string(cmp.Or(r.Priority, PriorityRoutine)))
		if r.FairnessKey != "" {
			m.Header.Set(HeaderFairnessKey, r.FairnessKey)
		}
	}
}

func (c *Client) requestMsg(key, msgID string, body []byte, extra nats.Header) (*nats.Msg, error) {
	if err := ValidateKey(key); err != nil {
		return nil, &InvalidRequestError{Code: CodeInvalidKey, Field: "key", Reason: err.Error()}
	}
	if b := extra.Get(HeaderBatch); b != "" {
		if err := ValidateBatch(b); err != nil {
			return nil, &InvalidRequestError{Code: CodeInvalidBatch, Field: "batch", Reason: err.Error()}
		}
	}
	m := nats.NewMsg(c.topo.RequestsSubject)
	m.Data = body
	for k, vs := range extra {
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	m.Header.Set(HeaderKey, key)
	m.Header.Set(HeaderMsgID, msgID)
	return m, nil
}

// batchHeader is the header that puts a request in batch ("": none).
func batchHeader(batch string) nats.Header {
	if batch == "" {
		return nil
	}
	return nats.Header{HeaderBatch: []string{batch}}
}

func (c *Client) publishError(err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("publish to %s: %w", c.topo.RequestsSubject, ErrNoStream)
	}
	return fmt.Errorf("publish request: %w", err)
}

// redriveMsgID is the message ID of a redrive: the key is kept (so the
// ledger still prevents a second run group) but the ID is fresh, since the
// original may still be inside the duplicate window.
func redriveMsgID(key string, dlqSeq uint64) string {
	return key + "/redrive/" + strconv.FormatUint(dlqSeq, 10)
}
