package rerun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
)

const (
	// autoFetchWait bounds one fetch, so a stopping worker is not held.
	autoFetchWait = time.Second
	// notEndedDelay is how soon an event whose runs entry is not terminal
	// yet is looked at again: the tracker publishes the terminal event
	// first and records it right after.
	notEndedDelay = 2 * time.Second
	// maxNotEnded bounds those looks (about a minute) before the event is
	// dropped with a warning.
	maxNotEnded = 30
)

// Auto is the workers' opt-in auto-retry policy: it reads the terminal
// group events of the status stream through a durable consumer (every
// replica shares it, each event goes to one), and retries a failed group
// whose error message matches, through the same Retrier as enqueue runs
// retry, until the key's retries created Max groups.
type Auto struct {
	JS       jetstream.JetStream
	Topology queue.Topology
	Retrier  *Retrier
	// Max is the number of groups retries may create per key (N).
	Max int
	// Match selects the failures retried, by the group's ErrorMessage.
	Match *regexp.Regexp
	// Provision creates the consumer; false only binds to it.
	Provision bool
	// By names the worker in the records.
	By string
	// OnOutcome, when not nil, is told every retry's outcome (metrics).
	OnOutcome func(Outcome)
	Log       *slog.Logger
}

// Run follows the status stream until ctx ends. Failures to bind or fetch
// are logged and retried: the policy never stops the worker.
func (a *Auto) Run(ctx context.Context) error {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	log := a.Log.With("component", "auto-retry")
	for ctx.Err() == nil {
		cons, err := a.consumer(ctx)
		if err != nil {
			log.Warn("auto-retry cannot bind its consumer; trying again", "error", err)
			_ = sleep(ctx, 5*time.Second)
			continue
		}
		if err := a.follow(ctx, cons, log); err != nil && ctx.Err() == nil {
			log.Warn("auto-retry fetch failed; trying again", "error", err)
			_ = sleep(ctx, time.Second)
		}
	}
	return nil
}

func (a *Auto) consumer(ctx context.Context) (jetstream.Consumer, error) {
	if a.Provision {
		return a.JS.CreateOrUpdateConsumer(ctx, a.Topology.StatusStream, a.Topology.AutoRetryConsumerConfig())
	}
	c, err := a.JS.Consumer(ctx, a.Topology.StatusStream, a.Topology.AutoRetryConsumer)
	if err != nil {
		return nil, fmt.Errorf("bind consumer %s: %w", a.Topology.AutoRetryConsumer, err)
	}
	return c, nil
}

// follow handles events one at a time: a retry is rare, and one at a time
// keeps the policy's RetryRuns calls few.
func (a *Auto) follow(ctx context.Context, cons jetstream.Consumer, log *slog.Logger) error {
	for ctx.Err() == nil {
		batch, err := cons.Fetch(10, jetstream.FetchMaxWait(autoFetchWait))
		if err != nil {
			return err
		}
		for msg := range batch.Messages() {
			a.handle(ctx, msg, log)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
	}
	return nil
}

// handle decides on one event and acks it once decided; a retry that
// could not settle hands the event back for later.
func (a *Auto) handle(ctx context.Context, msg jetstream.Msg, log *slog.Logger) {
	var ev client.StatusEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || !a.qualifies(ev) {
		_ = msg.Ack()
		return
	}
	out, err := a.retry(ctx, msg, ev)
	md, _ := msg.Metadata()
	// The tracker records the end right after publishing it: a retry that
	// came first is looked at again, and is not a decision yet.
	early := out.Kind == KindRefused && out.Reason == ReasonNotEnded && (md == nil || md.NumDelivered < maxNotEnded)
	if a.OnOutcome != nil && err == nil && ctx.Err() == nil && !early {
		a.OnOutcome(out)
	}
	switch {
	case ctx.Err() != nil:
		_ = msg.Nak()
	case err != nil:
		log.Warn("auto-retry failed; the event is handed back", "key", ev.Key, "run_group_id", ev.RunGroupID, "error", err)
		_ = msg.NakWithDelay(10 * time.Second)
	case out.Kind == KindBusy || out.Kind == KindUnresolved:
		_ = msg.NakWithDelay(30 * time.Second)
	case early:
		_ = msg.NakWithDelay(notEndedDelay)
	default:
		// The message is never logged: it may quote inputs.
		log.Info("auto-retry", "key", ev.Key, "run_group_id", ev.RunGroupID, "outcome", out.Kind, "reason", out.Reason,
			"new_run_group_id", out.NewGroup, "code", out.Code)
		_ = msg.Ack()
	}
}

// qualifies: a failed group's terminal event whose message matches. A
// Terminated group was stopped on purpose (an operator, a cancelled
// batch): the policy does not start it again.
func (a *Auto) qualifies(ev client.StatusEvent) bool {
	return ev.Terminal && ev.RunUUID == "" && client.IsFailedStatus(ev.Status) && !strings.EqualFold(ev.Status, "Terminated") &&
		a.Match != nil && a.Match.MatchString(ev.ErrorMessage)
}

// retry runs the procedure while keeping the event from being redelivered
// to another replica (a retry may look up until the horizon).
func (a *Auto) retry(ctx context.Context, msg jetstream.Msg, ev client.StatusEvent) (Outcome, error) {
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // owned here: stopped and waited for below
		defer close(done)
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-tick.C:
				_ = msg.InProgress()
			}
		}
	}()
	defer func() { cancel(); <-done }()
	return a.Retrier.Retry(rctx, ev.Key, Options{Trigger: TriggerAuto, By: a.By, CallCache: true, MaxRetries: a.Max,
		ExpectGroup: ev.RunGroupID})
}
