package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/lanes"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/metrics"
)

// Consumer pulls request messages and runs the Processor on them with
// bounded concurrency, fetching only when it has a free slot and the rate
// limiter expects capacity soon, so messages never wait in a replica's buffer
// while other replicas could submit them.
type Consumer struct {
	JS        jetstream.JetStream
	Topology  Topology
	Processor *Processor
	// Concurrency bounds messages in flight in this replica.
	Concurrency int
	// Ready blocks until a call can be made soon (the limiter's capacity
	// hint). Nil means always ready.
	Ready func(ctx context.Context) error
	// MaxBatch bounds the messages taken in one pull. Under a rate limit it
	// should be 1, so that a replica only holds what it can submit soon and
	// urgent work is not starved in its buffer; default 64.
	MaxBatch int
	// DrainTimeout bounds how long in-flight messages may finish after ctx
	// ends; past it they are released (NakWithDelay) for another replica.
	DrainTimeout time.Duration
	// Flows, when set, fetches flow by flow in the order the fleet's
	// scheduler decides (priority lanes, fairness keys), one message per
	// decision; nil fetches from the one shared consumer, as before lanes.
	Flows   *Flows
	Metrics *metrics.Metrics
	Log     *slog.Logger

	mu       sync.Mutex
	inFlight int
	bound    bool

	// ackWait is the AckWait of the consumer as JetStream has it, in
	// nanoseconds (0: not known yet, Topology.AckWait applies). Heartbeats
	// follow it rather than the configured value: a consumer managed
	// elsewhere, or re-provisioned by a replica with another --ack-wait
	// during a rolling update, must still hear from this one in time.
	ackWait atomic.Int64
}

// Bound reports whether the consumer is bound and pulling (for readiness).
func (c *Consumer) Bound() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bound
}

func (c *Consumer) setInFlight(delta int) {
	c.mu.Lock()
	c.inFlight += delta
	n := c.inFlight
	c.mu.Unlock()
	c.Metrics.SetInFlight(n)
}

// Run consumes until ctx ends, then drains: it stops pulling, lets in-flight
// messages finish within DrainTimeout and releases the rest. It returns after
// every message it took has been acked or handed back.
func (c *Consumer) Run(ctx context.Context) error {
	cons, err := c.JS.Consumer(ctx, c.Topology.RequestsStream, c.Topology.Consumer)
	if err != nil {
		return fmt.Errorf("bind consumer: %w", err)
	}
	c.observeAckWait(cons.CachedInfo())
	c.mu.Lock()
	c.bound = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.bound = false
		c.mu.Unlock()
	}()
	c.Metrics.SetConcurrencyLimit(c.Concurrency)

	// Handlers outlive ctx during the drain; cancelling handlerCtx tells
	// them to release their message.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	slots := make(chan struct{}, c.Concurrency)
	var wg sync.WaitGroup

	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		if err := c.gate(ctx); err != nil {
			<-slots
			continue
		}
		if c.Flows != nil {
			// One decision per message: the scheduler's choice is per token.
			m, flow, err := c.Flows.Next(ctx)
			if err != nil || m == nil {
				<-slots
				if err != nil && ctx.Err() == nil {
					c.Log.Warn("fetch failed", "error", err)
					_ = sleep(ctx, time.Second)
				}
				continue
			}
			c.scheduled(m, flow)
			wg.Add(1)
			c.setInFlight(1)
			go func() {
				defer func() { <-slots; c.setInFlight(-1); wg.Done() }()
				c.handle(handlerCtx, m)
			}()
			continue
		}
		// Take every other free slot too, so a burst is fetched in one request.
		n := 1
		for n < c.Concurrency && n < c.maxBatch() {
			select {
			case slots <- struct{}{}:
				n++
				continue
			default:
			}
			break
		}
		msgs, err := c.fetch(ctx, cons, n)
		if err != nil && ctx.Err() == nil {
			c.Log.Warn("fetch failed", "error", err)
			_ = sleep(ctx, time.Second)
		}
		for _, m := range msgs {
			wg.Add(1)
			c.setInFlight(1)
			go func(m jetstream.Msg) {
				defer func() { <-slots; c.setInFlight(-1); wg.Done() }()
				c.handle(handlerCtx, m)
			}(m)
		}
		for i := len(msgs); i < n; i++ {
			<-slots
		}
	}

	// Drain: no more pulls; give in-flight messages DrainTimeout, then make
	// them release.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.DrainTimeout):
		c.Log.Warn("drain timeout: releasing in-flight messages")
		cancelHandlers()
		<-done
	}
	return nil
}

// scheduled records a message the scheduler chose: its lane, its
// fairness key's bounded label and how long it waited since its enqueue.
func (c *Consumer) scheduled(m jetstream.Msg, flow lanes.Flow) {
	var wait time.Duration
	if meta, err := m.Metadata(); err == nil {
		wait = time.Since(meta.Timestamp)
	}
	c.Metrics.LaneScheduled(flow.Priority(), c.Flows.keyLabel(flow.Token), wait)
}

func (c *Consumer) maxBatch() int {
	if c.MaxBatch > 0 {
		return c.MaxBatch
	}
	return 64
}

func (c *Consumer) gate(ctx context.Context) error {
	if err := c.Processor.Pause.WaitResumed(ctx); err != nil {
		return err
	}
	if c.Ready != nil {
		return c.Ready(ctx)
	}
	return nil
}

// fetch returns what is available now, or long-polls for one message.
func (c *Consumer) fetch(ctx context.Context, cons jetstream.Consumer, n int) ([]jetstream.Msg, error) {
	batch, err := cons.FetchNoWait(n)
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) > 0 || ctx.Err() != nil {
		return msgs, batch.Error()
	}
	batch, err = cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		return nil, err
	}
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		return msgs, err
	}
	return msgs, nil
}

// handle processes one message, keeping it alive with InProgress while the
// processor works or waits (a limiter wait or a retry backoff never lets
// AckWait expire and never counts as a delivery), and turns a panic into a
// delayed redelivery instead of a crash.
func (c *Consumer) handle(ctx context.Context, m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		c.Log.Error("message without JetStream metadata; terminating it", "error", err)
		_ = m.Term()
		return
	}
	c.Metrics.MessageReceived(time.Since(meta.Timestamp), meta.NumDelivered)
	d := Delivery{Data: m.Data(), Header: m.Headers(), StreamSeq: meta.Sequence.Stream, NumDelivered: meta.NumDelivered, Timestamp: meta.Timestamp}

	stop := make(chan struct{})
	var hb sync.WaitGroup
	hb.Add(1)
	go func() {
		defer hb.Done()
		t := time.NewTimer(c.heartbeatInterval())
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = m.InProgress()
				t.Reset(c.heartbeatInterval())
			}
		}
	}()
	dec := c.process(ctx, d)
	close(stop)
	hb.Wait()

	switch dec.Action {
	case ActionAck:
		err = m.Ack()
	default:
		err = m.NakWithDelay(dec.Delay)
	}
	if err != nil {
		c.Log.Warn("could not settle the message; it will be redelivered", "seq", d.StreamSeq, "error", err)
	}
}

// heartbeatInterval is how often a message in progress is signalled: a
// third of the consumer's AckWait, so two signals in a row may be lost or
// late (a stall, a NATS reconnect) before JetStream redelivers the message.
// A dead replica's messages are redelivered between two thirds of AckWait
// and AckWait after its last signal: a short AckWait is what brings them
// back quickly (the ledger's lease keeps a redelivery that comes too early
// from acting while the holder is alive).
func (c *Consumer) heartbeatInterval() time.Duration {
	w := time.Duration(c.ackWait.Load())
	if w <= 0 {
		w = c.Topology.AckWait
	}
	if w <= 0 {
		w = DefaultTopology().AckWait
	}
	return max(w/3, 100*time.Millisecond)
}

// observeAckWait records the consumer's AckWait as JetStream reports it,
// warning when it is not the configured one.
func (c *Consumer) observeAckWait(info *jetstream.ConsumerInfo) {
	if info == nil || info.Config.AckWait <= 0 {
		return
	}
	w := info.Config.AckWait
	if old := time.Duration(c.ackWait.Swap(int64(w))); old != w && w != c.Topology.AckWait {
		c.Log.Warn("the consumer's AckWait is not the configured one; heartbeats follow the consumer's",
			"consumer_ack_wait", w, "configured_ack_wait", c.Topology.AckWait)
	}
}

func (c *Consumer) process(ctx context.Context, d Delivery) (dec Decision) {
	defer func() {
		if r := recover(); r != nil {
			// Never log the panic value: it may hold request inputs.
			c.Log.Error("panic while processing a message; it will be redelivered", "seq", d.StreamSeq, "stack", string(debug.Stack()))
			dec = Decision{Action: ActionNak, Delay: 10 * time.Second, Outcome: submission.OutcomeError}
			c.Metrics.MessageProcessed(dec.Outcome, 0)
		}
	}()
	return c.Processor.Handle(ctx, d)
}

// giveUpDeliveries marks a delivery as past the worker's delivery budget.
const giveUpDeliveries = 1 << 62

// advisory is the part of JetStream's max-deliveries advisory we use.
type advisory struct {
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// RunAdvisories settles messages that JetStream reports as having reached
// the consumer's MaxDeliver. The worker provisions the consumer without a
// delivery limit and enforces its own budget (so JetStream never strands a
// message); advisories come only from a consumer managed elsewhere with a
// limit, or from one provisioned by an earlier version. Each such message
// gets the give-up path of the state machine (honour leases, look up what
// may exist, then dead-letter) and is deleted from the requests stream.
func (c *Consumer) RunAdvisories(ctx context.Context) error {
	cons, err := c.JS.Consumer(ctx, c.Topology.AdvisoryStream, AdvisoryConsumer)
	if err != nil {
		return fmt.Errorf("bind advisory consumer: %w", err)
	}
	stream, err := c.JS.Stream(ctx, c.Topology.RequestsStream)
	if err != nil {
		return fmt.Errorf("bind requests stream: %w", err)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			_ = sleep(ctx, time.Second)
			continue
		}
		for m := range batch.Messages() {
			var a advisory
			if err := json.Unmarshal(m.Data(), &a); err != nil || a.StreamSeq == 0 {
				_ = m.Term()
				continue
			}
			raw, err := stream.GetMsg(ctx, a.StreamSeq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				_ = m.Ack() // already settled
				continue
			}
			if err != nil {
				_ = m.NakWithDelay(5 * time.Second)
				continue
			}
			d := Delivery{Data: raw.Data, Header: raw.Header, StreamSeq: raw.Sequence, NumDelivered: giveUpDeliveries, Timestamp: raw.Time}
			dec := c.Processor.Handle(ctx, d)
			if dec.Action != ActionAck {
				_ = m.NakWithDelay(dec.Delay)
				continue
			}
			if err := stream.DeleteMsg(ctx, a.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				c.Log.Warn("could not delete a dead-lettered message from the requests stream", "seq", a.StreamSeq, "error", err)
			}
			_ = m.Ack()
		}
	}
	return nil
}

// RunStats refreshes the backlog gauges every interval until ctx ends.
func (c *Consumer) RunStats(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		c.refreshStats(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Consumer) refreshStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := c.JS.Consumer(ctx, c.Topology.RequestsStream, c.Topology.Consumer)
	if err != nil {
		return
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return
	}
	c.observeAckWait(info)
	var oldest time.Duration
	if s, err := c.JS.Stream(ctx, c.Topology.RequestsStream); err == nil {
		if si, err := s.Info(ctx); err == nil && si.State.Msgs > 0 {
			oldest = time.Since(si.State.FirstTime)
		}
	}
	pending, ackPending := info.NumPending, uint64(info.NumAckPending)
	if c.Flows != nil {
		// Every flow's consumer, the shared one included: the fleet's backlog.
		pending, ackPending = 0, 0
		for _, b := range c.Flows.Backlog() {
			pending += b.Pending
			ackPending += uint64(b.AckPending)
		}
	}
	c.Metrics.SetConsumerState(pending, ackPending, oldest)
}
