package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outcome is what the results or dead-letter stream says about a request.
// Exactly one of Result and DeadLetter is set, unless the message could not
// be decoded (Err is then set and Header still holds the reason and code a
// dead letter carries).
type Outcome struct {
	Key        string
	Result     *Result
	DeadLetter *DeadLetter
	Err        error
	// Dead is true when the outcome came from the dead-letter stream.
	Dead bool
	// Sequence is the message's sequence in its stream; Stored is when the
	// stream stored it.
	Sequence uint64
	Stored   time.Time
	Header   nats.Header
	// Earlier marks a dead letter that does not settle the request: one of
	// an earlier publish of the key (before the one watched), or a
	// duplicate_in_flight refusal while another message of the key was
	// being called for. It explains a wait; it is not the outcome.
	Earlier bool
}

// Code is the dead letter's error code ("" for a result).
func (o Outcome) Code() string {
	if o.DeadLetter != nil && o.DeadLetter.Error.Code != "" {
		return o.DeadLetter.Error.Code
	}
	return o.Header.Get(HeaderErrorCode)
}

// Reason is the dead letter's reason ("" for a result).
func (o Outcome) Reason() DeadLetterReason {
	if o.DeadLetter != nil {
		return o.DeadLetter.Reason
	}
	return DeadLetterReason(o.Header.Get(HeaderReason))
}

func decodeOutcome(key string, dead bool, seq uint64, stored time.Time, h nats.Header, data []byte) Outcome {
	o := Outcome{Key: key, Dead: dead, Sequence: seq, Stored: stored, Header: h}
	if dead {
		d, err := DecodeDeadLetter(data)
		if err == nil {
			o.DeadLetter = &d
		}
		o.Err = err
		return o
	}
	r, err := DecodeResult(data)
	if err == nil {
		o.Result = &r
	}
	o.Err = err
	return o
}

// Result returns key's result, or ok=false when it has none (yet).
func (c *Client) Result(ctx context.Context, key string) (r Outcome, ok bool, err error) {
	s, err := c.js.Stream(ctx, c.topo.ResultsStream)
	if err != nil {
		return Outcome{}, false, fmt.Errorf("stream %s: %w", c.topo.ResultsStream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, c.topo.ResultSubject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Outcome{}, false, nil
	}
	if err != nil {
		return Outcome{}, false, fmt.Errorf("result of a key: %w", err)
	}
	return decodeOutcome(key, false, m.Sequence, m.Time, m.Header, m.Data), true, nil
}

// WaitResult waits until the request p acknowledged has an outcome: its
// result, or a dead letter of this publish (or a later one) of its key. A
// dead letter of an earlier publish is skipped. It returns ctx's error if
// ctx ends first.
func (c *Client) WaitResult(ctx context.Context, p Published) (Outcome, error) {
	w, err := c.Watch(ctx, []Published{p})
	if err != nil {
		return Outcome{}, err
	}
	defer w.Stop()
	for o := range w.Outcomes() {
		if !o.Earlier {
			return o, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	return Outcome{}, errors.New("wait result: the watch ended without an outcome")
}

// Watcher follows the outcomes of a set of published requests.
type Watcher struct {
	out    chan Outcome
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Outcomes delivers each watched key's settling outcome exactly once (and
// before it, at most one Earlier dead letter per key), in arrival order. It
// is closed when every key has settled, or when the watch stops.
func (w *Watcher) Outcomes() <-chan Outcome { return w.out }

// Stop ends the watch and waits for its goroutines.
func (w *Watcher) Stop() {
	w.cancel()
	w.wg.Wait()
}

// WatchOption configures a Watch.
type WatchOption func(*watchState)

// DeadLettersAfter makes only dead letters stored after the dead-letter
// stream's sequence mark settle a request (take mark with DeadLetterMark
// before publishing). Older ones, including the dead letter of an original
// message whose republish was dropped as a duplicate, are delivered as
// Earlier: the request stays unsettled until a new outcome arrives. Without
// it, a dead letter settles a request when its StreamSequence is at least
// the publish's Sequence.
func DeadLettersAfter(mark uint64) WatchOption {
	return func(st *watchState) { st.settleAfter, st.hasSettleAfter = mark, true }
}

// DeadLetterMark is the dead-letter stream's last sequence now: the mark
// for DeadLettersAfter.
func (c *Client) DeadLetterMark(ctx context.Context) (uint64, error) {
	s, err := c.js.Stream(ctx, c.topo.DLQStream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", c.topo.DLQStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", c.topo.DLQStream, err)
	}
	return info.State.LastSeq, nil
}

// Watch follows the results and dead-letter streams for the requests in
// published (as PublishBatch returned them). A key's outcome settles it when
// it is a result, or a dead letter whose StreamSequence is at least the
// publish's Sequence (see DeadLettersAfter for the stricter rule). Outcomes
// stored before the watch began are found too, so Watch may be called after
// publishing.
func (c *Client) Watch(ctx context.Context, published []Published, opts ...WatchOption) (*Watcher, error) {
	wctx, cancel := context.WithCancel(ctx)
	w := &Watcher{out: make(chan Outcome, 64), cancel: cancel}
	st := &watchState{since: map[string]uint64{}, tokens: map[string]string{}, raw: make(chan Outcome, 256)}
	for _, o := range opts {
		o(st)
	}
	for _, p := range published {
		if s, ok := st.since[p.Key]; !ok || p.Sequence < s {
			if !ok {
				st.order = append(st.order, p.Key)
			}
			st.since[p.Key] = p.Sequence
			st.tokens[KeyToken(p.Key)] = p.Key
		}
	}
	var streams [2]jetstream.Stream
	for i, name := range []string{c.topo.ResultsStream, c.topo.DLQStream} {
		s, err := c.js.Stream(ctx, name)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		streams[i] = s
	}
	// Consumers first, from the current end of each stream; then a direct
	// read of what was stored before. Anything seen twice is dropped below.
	var ccs []jetstream.ConsumeContext
	for i, prefix := range []string{c.topo.ResultsPrefix, c.topo.DLQPrefix} {
		cc, err := st.follow(wctx, streams[i], prefix, i == 1)
		if err != nil {
			for _, cc := range ccs {
				cc.Stop()
			}
			cancel()
			return nil, err
		}
		ccs = append(ccs, cc)
	}
	w.wg.Go(func() {
		<-wctx.Done()
		for _, cc := range ccs {
			cc.Stop()
		}
	})
	w.wg.Go(func() { st.readStored(wctx, c.topo, streams[0], streams[1]) })
	w.wg.Go(func() { st.dispatch(wctx, w.out, cancel) })
	return w, nil
}

// watchState is a Watch's bookkeeping, owned by its dispatch goroutine once
// the watch runs (since and tokens are read-only from then on).
type watchState struct {
	since  map[string]uint64 // key -> sequence of its watched publish
	tokens map[string]string // key token -> key
	order  []string
	raw    chan Outcome
	// dlqStart is the dead-letter stream's last sequence when the watch
	// began: an unreadable dead letter at or before it cannot be this
	// publish's.
	dlqStart uint64
	// settleAfter, when set, is the DeadLettersAfter mark.
	settleAfter    uint64
	hasSettleAfter bool
}

func (st *watchState) follow(ctx context.Context, s jetstream.Stream, prefix string, dead bool) (jetstream.ConsumeContext, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", s.CachedInfo().Config.Name, err)
	}
	if dead {
		st.dlqStart = info.State.LastSeq
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ".>"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    info.State.LastSeq + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", info.Config.Name, err)
	}
	return cons.Consume(func(m jetstream.Msg) {
		key, ok := st.tokens[strings.TrimPrefix(m.Subject(), prefix+".")]
		md, err := m.Metadata()
		if !ok || err != nil {
			return // another request's outcome
		}
		st.send(ctx, decodeOutcome(key, dead, md.Sequence.Stream, md.Timestamp, m.Headers(), m.Data()))
	})
}

func (st *watchState) send(ctx context.Context, o Outcome) {
	select {
	case st.raw <- o:
	case <-ctx.Done():
	}
}

// readStored reads each key's last result and last dead letter, a few keys
// at a time.
func (st *watchState) readStored(ctx context.Context, t Topology, results, dlq jetstream.Stream) {
	eachKey(ctx, st.order, 4, func(key string) {
		if m, err := results.GetLastMsgForSubject(ctx, t.ResultSubject(key)); err == nil {
			st.send(ctx, decodeOutcome(key, false, m.Sequence, m.Time, m.Header, m.Data))
			return
		}
		if m, err := dlq.GetLastMsgForSubject(ctx, t.DLQSubject(key)); err == nil {
			st.send(ctx, decodeOutcome(key, true, m.Sequence, m.Time, m.Header, m.Data))
		}
	})
}

// eachKey calls read for every key, workers at a time, until ctx ends: the
// watches' direct reads of what was stored before they began.
func eachKey(ctx context.Context, keys []string, workers int, read func(key string)) {
	next := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for k := range next {
				read(k)
			}
		})
	}
	defer wg.Wait()
	defer close(next)
	for _, k := range keys {
		select {
		case next <- k:
		case <-ctx.Done():
			return
		}
	}
}

// dispatch forwards each key's settling outcome once, closing out when all
// keys have settled.
func (st *watchState) dispatch(ctx context.Context, out chan<- Outcome, done context.CancelFunc) {
	defer close(out)
	defer done()
	open := len(st.since)
	earlier := map[string]bool{}
	for open > 0 {
		var o Outcome
		select {
		case o = <-st.raw:
		case <-ctx.Done():
			return
		}
		since, watching := st.since[o.Key]
		if !watching {
			continue // settled already
		}
		if o.Dead && st.isEarlier(o, since) {
			if earlier[o.Key] {
				continue
			}
			earlier[o.Key] = true
			o.Earlier = true
		} else {
			delete(st.since, o.Key)
			open--
		}
		select {
		case out <- o:
		case <-ctx.Done():
			return
		}
	}
}

func (st *watchState) isEarlier(o Outcome, since uint64) bool {
	if o.DeadLetter != nil && o.DeadLetter.Reason == ReasonDuplicateInFlight {
		// Another message of the key was being called for: that one settles
		// the key, not this refusal.
		return true
	}
	if st.hasSettleAfter {
		return o.Sequence <= st.settleAfter
	}
	if o.DeadLetter != nil && o.DeadLetter.StreamSequence != 0 {
		return o.DeadLetter.StreamSequence < since
	}
	return o.Sequence <= st.dlqStart
}
