package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/lanes"
	"github.com/omicsq/omicsq/metrics"
)

// FlowPicker decides which flow gets the fleet's next token
// (lanes.Shared).
type FlowPicker interface {
	Pick(ctx context.Context, backlog map[lanes.Flow]uint64) (lanes.Flow, bool, error)
}

// Flows fetches request messages flow by flow, in the order the fleet's
// scheduler decides: each flow (one lane's requests of one fairness key)
// has its own durable consumer, and the backlog of every flow comes from
// JetStream itself (the consumers' pending counts, and the stream's
// per-subject counts for flows without a consumer yet). Only the consume
// loop calls Next; Backlog may be called from anywhere.
type Flows struct {
	JS       jetstream.JetStream
	Topology Topology
	Picker   FlowPicker
	// Refresh is how old the backlog may get before a decision reads it
	// again. Default 200ms.
	Refresh time.Duration
	// Probe is how often a flow whose messages are all delivered but not
	// acknowledged is fetched from anyway: a message handed back with a
	// delay is due again without showing as pending. Default 1s.
	Probe time.Duration
	// Names maps the tokens of fairness keys an operator named (in
	// --fairness-weights) to the keys, for metric labels; other keys are
	// labelled by a prefix of their token, never by a request value.
	Names   map[string]string
	Metrics *metrics.Metrics
	Log     *slog.Logger

	mu        sync.Mutex
	backlog   map[lanes.Flow]FlowBacklog
	refreshed time.Time
	cons      map[lanes.Flow]jetstream.Consumer
	probed    map[lanes.Flow]time.Time
	aside     map[lanes.Flow]time.Time // flows left out of the schedule until then
	warned    time.Time
	empties   int
}

// FlowBacklog is one flow's messages as JetStream last reported them.
type FlowBacklog struct {
	// Pending: in the stream, not delivered yet.
	Pending uint64
	// AckPending: delivered, not acknowledged (in progress, or handed
	// back with a delay).
	AckPending int
}

func (f *Flows) refreshEvery() time.Duration {
	if f.Refresh > 0 {
		return f.Refresh
	}
	return 200 * time.Millisecond
}

func (f *Flows) probeEvery() time.Duration {
	if f.Probe > 0 {
		return f.Probe
	}
	return time.Second
}

// Backlog returns the last backlog read, by flow.
func (f *Flows) Backlog() map[lanes.Flow]FlowBacklog {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[lanes.Flow]FlowBacklog, len(f.backlog))
	for k, v := range f.backlog {
		out[k] = v
	}
	return out
}

// Next returns the next message of the flow the scheduler picks. A flow
// that turns out empty (the backlog was stale) is marked so and the
// backlog read again before the next pick, so an empty fetch never waits
// and never costs a token. When no flow has backlog it waits one refresh
// interval and returns no message, so that the caller's gate (pause,
// limiter) is asked again before anything is fetched.
func (f *Flows) Next(ctx context.Context) (jetstream.Msg, lanes.Flow, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, lanes.Flow{}, err
		}
		f.mu.Lock()
		stale := time.Since(f.refreshed) >= f.refreshEvery()
		f.mu.Unlock()
		if stale {
			if err := f.refresh(ctx); err != nil {
				return nil, lanes.Flow{}, err
			}
		}
		// A flow with nothing pending but messages out (in flight
		// elsewhere, or handed back with a delay, which JetStream counts as
		// neither) is probed directly, outside the schedule: offered to the
		// scheduler, its empty fetches would count as decisions and dilute
		// the minimum shares of the lanes that do have backlog.
		if fl, ok := f.dueProbe(); ok {
			if m, err := f.fetch(ctx, fl); err == nil && m != nil {
				return m, fl, nil // probed again at once: redeliveries come in runs
			}
			f.mu.Lock()
			f.probed[fl] = time.Now()
			f.mu.Unlock()
		}
		candidates := f.candidates()
		if len(candidates) == 0 {
			return nil, lanes.Flow{}, sleep(ctx, f.refreshEvery())
		}
		flow, ok, err := f.Picker.Pick(ctx, candidates)
		if err != nil {
			return nil, lanes.Flow{}, err
		}
		if !ok {
			continue
		}
		m, err := f.fetch(ctx, flow)
		if err != nil {
			// One flow whose consumer cannot be bound (a permission, the
			// account's consumer limit) is set aside for a while; the
			// others go on.
			f.Log.Warn("a flow's consumer cannot be bound; setting the flow aside", "lane", flow.Priority(), "for", flowAside, "error", err)
			f.mu.Lock()
			f.aside[flow] = time.Now().Add(flowAside)
			f.mu.Unlock()
			continue
		}
		f.mu.Lock()
		if m != nil {
			f.empties = 0
			if b := f.backlog[flow]; b.Pending > 0 {
				b.Pending--
				b.AckPending++
				f.backlog[flow] = b
			}
			f.mu.Unlock()
			return m, flow, nil
		}
		// Stale: read the backlog again before the next pick; after a few
		// empty fetches in a row, at the refresh pace (JetStream may hold
		// messages back, e.g. at MaxAckPending).
		b := f.backlog[flow]
		b.Pending = 0
		f.backlog[flow] = b
		f.probed[flow] = time.Now()
		f.empties++
		f.refreshed = time.Time{}
		pause := f.empties > 3
		f.mu.Unlock()
		if pause {
			if err := sleep(ctx, f.refreshEvery()); err != nil {
				return nil, lanes.Flow{}, err
			}
		}
	}
}

// flowAside is how long a flow whose consumer could not be bound is left
// out of the schedule.
const flowAside = 30 * time.Second

// candidates is the backlog the scheduler chooses from: the flows with
// pending messages, but those set aside.
func (f *Flows) candidates() map[lanes.Flow]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	out := map[lanes.Flow]uint64{}
	for fl, b := range f.backlog {
		if b.Pending > 0 && !now.Before(f.aside[fl]) {
			out[fl] = b.Pending
		}
	}
	return out
}

// dueProbe returns a flow with nothing pending but messages out whose
// last probe found nothing at least probeEvery ago (Next marks an empty
// probe).
func (f *Flows) dueProbe() (lanes.Flow, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for fl, b := range f.backlog {
		if b.Pending == 0 && b.AckPending > 0 && now.Sub(f.probed[fl]) >= f.probeEvery() && !now.Before(f.aside[fl]) {
			return fl, true
		}
	}
	return lanes.Flow{}, false
}

func (f *Flows) fetch(ctx context.Context, flow lanes.Flow) (jetstream.Msg, error) {
	cons, err := f.consumer(ctx, flow)
	if err != nil {
		return nil, err
	}
	batch, err := cons.FetchNoWait(1)
	if err == nil {
		for m := range batch.Messages() {
			return m, nil
		}
		err = batch.Error()
	}
	if err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		// Deleted while idle (InactiveThreshold), or the server's answer
		// was lost: bind again next time.
		f.mu.Lock()
		delete(f.cons, flow)
		f.mu.Unlock()
		f.Log.Debug("fetch from a flow failed", "lane", flow.Priority(), "error", err)
	}
	return nil, nil
}

// consumer binds the flow's consumer, creating it if no replica has yet.
func (f *Flows) consumer(ctx context.Context, flow lanes.Flow) (jetstream.Consumer, error) {
	f.mu.Lock()
	c, ok := f.cons[flow]
	f.mu.Unlock()
	if ok {
		return c, nil
	}
	t := f.Topology
	name := t.FlowConsumer(flow.Priority(), flow.Token)
	c, err := f.JS.Consumer(ctx, t.RequestsStream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) && flow.Token != "" {
		// Idempotent: replicas seeing a new flow together all succeed.
		c, err = f.JS.CreateOrUpdateConsumer(ctx, t.RequestsStream, t.FlowConsumerConfig(flow.Priority(), flow.Token))
	}
	if err != nil {
		return nil, fmt.Errorf("bind consumer %s: %w", name, err)
	}
	f.mu.Lock()
	f.cons[flow] = c
	f.mu.Unlock()
	return c, nil
}

// flowToken is what a flow subject's last token may be: a consumer name
// is built from it.
var flowToken = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// refresh reads every flow's backlog: the stream's per-subject counts find
// the flows, and each flow consumer's pending counts say what is fetchable.
func (f *Flows) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := f.Topology
	stream, err := f.JS.Stream(ctx, t.RequestsStream)
	if err != nil {
		return fmt.Errorf("bind stream %s: %w", t.RequestsStream, err)
	}
	prefix := t.RequestsSubject + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return fmt.Errorf("read the flows of %s: %w", t.RequestsStream, err)
	}
	infos := map[string]*jetstream.ConsumerInfo{}
	list := stream.ListConsumers(ctx)
	for ci := range list.Info() {
		infos[ci.Name] = ci
	}
	if err := list.Err(); err != nil {
		return fmt.Errorf("read the flow consumers of %s: %w", t.RequestsStream, err)
	}
	backlog := map[lanes.Flow]FlowBacklog{}
	if ci := infos[t.Consumer]; ci != nil {
		backlog[lanes.Flow{Lane: lanes.LaneIndex(client.PriorityRoutine)}] = FlowBacklog{Pending: ci.NumPending, AckPending: ci.NumAckPending}
	}
	var unknown uint64
	for subj, n := range info.State.Subjects {
		lane, token, ok := strings.Cut(strings.TrimPrefix(subj, prefix), ".")
		l := lanes.LaneIndex(client.Priority(lane))
		if !ok || l < 0 || token == "" || strings.Contains(token, ".") {
			unknown += n
			continue
		}
		fl := lanes.Flow{Lane: l, Token: token}
		if ci := infos[t.FlowConsumer(fl.Priority(), token)]; ci != nil {
			backlog[fl] = FlowBacklog{Pending: ci.NumPending, AckPending: ci.NumAckPending}
		} else {
			backlog[fl] = FlowBacklog{Pending: n}
		}
	}
	f.mu.Lock()
	if f.cons == nil {
		f.cons, f.probed, f.aside = map[lanes.Flow]jetstream.Consumer{}, map[lanes.Flow]time.Time{}, map[lanes.Flow]time.Time{}
	}
	f.backlog, f.refreshed = backlog, time.Now()
	warn := unknown > 0 && time.Since(f.warned) > time.Minute
	if warn {
		f.warned = time.Now()
	}
	f.mu.Unlock()
	if warn {
		// No flow consumer can take these: the subject names no lane.
		f.Log.Warn("requests on subjects that name no lane are not consumed", "messages", unknown,
			"want", prefix+"<urgent|normal|routine>.<token>")
	}
	if f.Metrics != nil {
		keys := make([]metrics.FairnessBacklog, 0, len(backlog))
		for fl, b := range backlog {
			keys = append(keys, metrics.FairnessBacklog{Lane: fl.Priority(), Key: f.backlogLabel(fl.Token), Count: b.Pending})
		}
		f.Metrics.SetLaneBacklog(keys)
	}
	return nil
}

// keyLabel is a fairness key's label on the scheduled counter: its name
// when the operator named it, legacy for the bare subject, else other
// (metrics.LaneScheduled maps unnamed labels to other).
func (f *Flows) keyLabel(token string) string {
	if token == "" {
		return metrics.FairnessLegacy
	}
	if n, ok := f.Names[token]; ok {
		return n
	}
	return metrics.FairnessLabel(token)
}

// backlogLabel is a fairness key's label on the backlog gauge (top keys
// only): its name, legacy, or a prefix of its token.
func (f *Flows) backlogLabel(token string) string { return f.keyLabel(token) }
