package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/ratelimit"
)

// Overview is the fleet at a glance; /api/overview serves it as JSON for
// the page's live updates.
type Overview struct {
	At time.Time `json:"at"`
	// Consumers are the requests stream's consumers: one per lane or flow
	// where the fleet has several, else the worker's one.
	Consumers []ConsumerView `json:"consumers"`
	// Lanes is the backlog by priority lane, urgent first.
	Lanes    []LaneView `json:"lanes"`
	Backlog  uint64     `json:"backlog"`
	InFlight int        `json:"in_flight"`
	// OldestSeconds is the age of the oldest waiting request.
	OldestSeconds float64 `json:"oldest_seconds"`
	// SubmittedLastMinute counts results stored in the last minute.
	SubmittedLastMinute int         `json:"submitted_last_minute"`
	Pause               pause.State `json:"pause"`
	// PauseRevision is the flag's KV revision: Resume clears only that one.
	PauseRevision     uint64            `json:"pause_revision"`
	Quotas            []ratelimit.Quota `json:"quotas"`
	DeadLetters       int               `json:"dead_letters"`
	DeadLetterReasons map[string]int    `json:"dead_letter_reasons"`
	Runs              map[string]int    `json:"runs"`
	// Errors name the parts that could not be read (the rest is shown).
	Errors []string `json:"errors,omitempty"`
}

// LaneView is one priority lane's backlog: its flows (one per fairness
// key) added up. The bare requests subject (producers
// from before lanes) is the routine lane's legacy flow.
type LaneView struct {
	Lane     string `json:"lane"`
	Flows    int    `json:"flows"`
	Pending  uint64 `json:"pending"`
	InFlight int    `json:"in_flight"`
}

// laneOf is the lane of a consumer's filter subject: <requests
// subject>.<lane>.<token>, or the bare subject (routine).
func laneOf(requestsSubject, filter string) string {
	if rest, ok := strings.CutPrefix(filter, requestsSubject+"."); ok {
		lane, _, _ := strings.Cut(rest, ".")
		return lane
	}
	return string(client.PriorityRoutine)
}

// ConsumerView is one consumer of the requests stream.
type ConsumerView struct {
	Name        string `json:"name"`
	Filter      string `json:"filter"`
	Pending     uint64 `json:"pending"`
	InFlight    int    `json:"in_flight"`
	Redelivered int    `json:"redelivered"`
}

// overviewCache bounds the load many open pages put on JetStream.
type overviewCache struct {
	load func(context.Context) Overview
	ttl  time.Duration
	mu   sync.Mutex
	last Overview
}

// get returns the cached overview, loading it when stale. The load is
// not bound to the caller's request: one closed tab must not cache errors
// for every other viewer.
func (c *overviewCache) get(ctx context.Context) Overview {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.last.At) > c.ttl {
		c.last = c.load(context.WithoutCancel(ctx))
	}
	return c.last
}

func (s *Server) loadOverview(ctx context.Context) Overview {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	now := s.cfg.Now()
	o := Overview{At: now}
	fail := func(what string, err error) { o.Errors = append(o.Errors, what+": "+err.Error()) }
	if err := s.loadConsumers(ctx, &o); err != nil {
		fail("requests stream", err)
	}
	if n, err := s.countSince(ctx, s.cfg.Topology.ResultsStream, now.Add(-time.Minute)); err != nil {
		fail("results stream", err)
	} else {
		o.SubmittedLastMinute = n
	}
	if st, rev, err := s.pauseState(ctx); err != nil {
		fail("pause flag", err)
	} else {
		o.Pause, o.PauseRevision = st, rev
	}
	if q, err := ratelimit.Inspect(ctx, s.cfg.JS, s.cfg.RateLimitBucket, now); err != nil {
		fail("rate limiter", err)
	} else {
		o.Quotas = q
	}
	if s.cfg.Index != nil {
		o.DeadLetters = s.cfg.Index.Query(DLQFilter{}, 0, 0).Total
		o.DeadLetterReasons = s.cfg.Index.Reasons()
	}
	if s.cfg.Runs != nil {
		o.Runs = s.cfg.Runs.Counts()
	}
	return o
}

func (s *Server) loadConsumers(ctx context.Context, o *Overview) error {
	st, err := s.cfg.JS.Stream(ctx, s.cfg.Topology.RequestsStream)
	if err != nil {
		return err
	}
	// One read: the stream's state, and the per-subject counts the lanes
	// are made of (bounded by lanes × fairness keys, not by requests).
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(s.cfg.Topology.RequestsSubject+".>"))
	if err != nil {
		return err
	}
	if info.State.Msgs > 0 {
		o.OldestSeconds = max(time.Since(info.State.FirstTime).Seconds(), 0)
	}
	l := st.ListConsumers(ctx)
	for ci := range l.Info() {
		v := ConsumerView{Name: ci.Name, Filter: ci.Config.FilterSubject, Pending: ci.NumPending, InFlight: ci.NumAckPending, Redelivered: ci.NumRedelivered}
		if v.Filter == "" && len(ci.Config.FilterSubjects) > 0 {
			v.Filter = ci.Config.FilterSubjects[0]
		}
		o.Consumers = append(o.Consumers, v)
		o.Backlog += v.Pending
		o.InFlight += v.InFlight
	}
	slices.SortFunc(o.Consumers, func(a, b ConsumerView) int { return strings.Compare(a.Name, b.Name) })
	if err := l.Err(); err != nil {
		return err
	}
	s.loadLanes(info.State, o)
	return nil
}

// loadLanes counts each lane's stored requests by subject, as the
// scheduler does: flow consumers exist only once a worker has served the
// flow, the messages from the moment they are published. Waiting is
// stored less in flight (its consumers' unacknowledged messages).
func (s *Server) loadLanes(state jetstream.StreamState, o *Overview) {
	subject := s.cfg.Topology.RequestsSubject
	total := state.Msgs
	order := []client.Priority{client.PriorityUrgent, client.PriorityNormal, client.PriorityRoutine}
	lanes := map[string]*LaneView{}
	for _, lane := range order {
		lanes[string(lane)] = &LaneView{Lane: string(lane)}
	}
	stored := map[string]uint64{}
	var inFlows uint64
	for subj, n := range state.Subjects {
		lane := laneOf(subject, subj)
		if lv := lanes[lane]; lv != nil {
			lv.Flows++
			stored[lane] += n
			inFlows += n
		}
	}
	if total > inFlows { // the bare subject: the routine lane's legacy flow
		lanes[string(client.PriorityRoutine)].Flows++
		stored[string(client.PriorityRoutine)] += total - inFlows
	}
	for _, c := range o.Consumers {
		if lv := lanes[laneOf(subject, c.Filter)]; lv != nil {
			lv.InFlight += c.InFlight
		}
	}
	for _, lane := range order {
		lv := lanes[string(lane)]
		lv.Pending = stored[lv.Lane] - min(stored[lv.Lane], uint64(lv.InFlight))
		o.Lanes = append(o.Lanes, *lv)
	}
}

// countSince counts the messages stream stored from since on: the first
// of them, headers only, says how many follow it.
func (s *Server) countSince(ctx context.Context, stream string, since time.Time) (int, error) {
	st, err := s.cfg.JS.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs == 0 || info.State.LastTime.Before(since) {
		return 0, err
	}
	n := 0
	err = readOrdered(ctx, st, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since, HeadersOnly: true},
		func(_ jetstream.Msg, md *jetstream.MsgMetadata) bool {
			n = 1 + int(md.NumPending)
			return false
		})
	return n, err
}

// readOrdered reads stream with one ordered consumer, calling each until it
// returns false or nothing is left, then deletes the consumer rather than
// leaving it to the server's inactivity timeout: a console polls, and each
// poll would otherwise leave one behind.
func readOrdered(ctx context.Context, st jetstream.Stream, cfg jetstream.OrderedConsumerConfig, each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer func() {
		it.Stop()
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = st.DeleteConsumer(dctx, info.Name)
			cancel()
		}
	}()
	for {
		m, err := it.Next(jetstream.NextMaxWait(time.Second))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil // nothing (more) to read
		}
		if err != nil {
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if !each(m, md) || md.NumPending == 0 || ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (s *Server) pauseState(ctx context.Context) (pause.State, uint64, error) {
	kv, err := s.cfg.JS.KeyValue(ctx, s.cfg.Topology.ControlBucket)
	if err != nil {
		return pause.State{}, 0, err
	}
	e, err := kv.Get(ctx, pause.StateKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return pause.State{}, 0, nil
	}
	if err != nil {
		return pause.State{}, 0, err
	}
	var st pause.State
	return st, e.Revision(), json.Unmarshal(e.Value(), &st)
}

func (s *Server) overviewJSON(w http.ResponseWriter, r *http.Request, _ string) {
	writeJSON(w, s.view.get(r.Context()))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (c *overviewCache) invalidate() {
	c.mu.Lock()
	c.last = Overview{}
	c.mu.Unlock()
}

func (s *Server) overviewPage(w http.ResponseWriter, r *http.Request, who string) {
	s.render(w, "overview", who, map[string]any{"O": s.view.get(r.Context())})
}
