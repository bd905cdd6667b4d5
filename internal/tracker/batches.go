package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/batch"
	"github.com/omicsq/omicsq/internal/keys"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// Terminator stops run groups; *submit.Client. The tracker terminates the
// running members of cancelled batches when its API is one.
type Terminator interface {
	TerminateRunGroup(ctx context.Context, req *submit.TerminateRunGroupRequest) (*submit.TerminateRunGroupResponse, error)
}

// codeStatusNotSupported is TerminateRunGroup's refusal of a group that has
// ended (the sandbox's answer; the API documents none, see
// submit.Client.TerminateRunGroup).
const codeStatusNotSupported = "FailedOperation.StatusNotSupported"

// memberView is what the leader keeps of one member: enough to know when
// its batch may be complete. The decision itself is taken from a fresh
// listing of the bucket (see complete).
type memberView struct{ terminal bool }

// batchView is one batch as the leader's watch of the batches bucket
// delivered it.
type batchView struct {
	rec      *client.BatchRecord
	members  map[string]memberView // member KV key → view
	terminal int
}

// batches is the leader's view of the batches bucket, fed by its watch:
// which batches are cancelled (their running members are terminated), and
// which may have just completed.
type batches struct {
	store *batch.Store

	mu    sync.Mutex
	views map[string]*batchView // batch token → view
	// due holds the batches to look at for completion.
	due map[string]bool
	// terminated holds, per runs token, the run group a TerminateRunGroup
	// settled (done, or already ended): it is not asked again for the
	// group. It is kept in memory only: after a fail-over the new leader
	// asks again, which is harmless (see terminate).
	terminated map[string]string
	wake       chan struct{}
}

func newBatches(kv jetstream.KeyValue, now func() time.Time) *batches {
	return &batches{store: &batch.Store{KV: kv, Now: now}, views: map[string]*batchView{}, due: map[string]bool{},
		terminated: map[string]string{}, wake: make(chan struct{}, 1)}
}

// cancelled reports whether batch id is cancelled, as the watch delivered.
func (b *batches) cancelled(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.views[keys.BatchMeta(id)]
	return v != nil && v.rec != nil && v.rec.CancelledAt != nil
}

// hasRecord reports whether the watch delivered batch id's record.
func (b *batches) hasRecord(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.views[keys.BatchMeta(id)]
	return v != nil && v.rec != nil
}

// watch feeds the view from the bucket until ctx ends; a watch that ends
// ends the leadership, as the runs watch does.
func (b *batches) watch(ctx context.Context, onErr func(error)) error {
	w, err := b.store.KV.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the batches bucket's watch ended")
			}
			if e == nil {
				b.poke()
				continue
			}
			if err := b.apply(e); err != nil {
				onErr(err)
			}
		}
	}
}

func (b *batches) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// apply takes one record or member into the view.
func (b *batches) apply(e jetstream.KeyValueEntry) error {
	token, member, isMember := strings.Cut(e.Key(), ".m.")
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.views[token]
	if v == nil {
		v = &batchView{members: map[string]memberView{}}
		b.views[token] = v
	}
	if !isMember {
		var rec client.BatchRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return fmt.Errorf("decode a batch record: %w", err)
		}
		v.rec = &rec
		if rec.CompletedAt != nil {
			v.members, v.terminal = nil, 0 // done: its members no longer matter
			return nil
		}
		b.due[token] = true
		b.pokeLocked()
		return nil
	}
	if v.rec != nil && v.rec.CompletedAt != nil {
		return nil
	}
	var m client.BatchMember
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return fmt.Errorf("decode a batch member: %w", err)
	}
	if v.members == nil {
		v.members = map[string]memberView{}
	}
	old := v.members[member]
	if old.terminal {
		v.terminal--
	}
	if m.Terminal {
		v.terminal++
		b.due[token] = true
		b.pokeLocked()
	}
	v.members[member] = memberView{terminal: m.Terminal}
	return nil
}

func (b *batches) pokeLocked() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// candidates returns the batches that look complete: registered, not
// completed, with every registered member present and terminal.
func (b *batches) candidates() []client.BatchRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []client.BatchRecord
	for token := range b.due {
		delete(b.due, token)
		v := b.views[token]
		if v == nil || v.rec == nil || v.rec.CompletedAt != nil || v.rec.Members == 0 {
			continue
		}
		if len(v.members) >= v.rec.Members && v.terminal == len(v.members) {
			out = append(out, *v.rec)
		}
	}
	return out
}

// completeLoop publishes the completion event of every batch that
// completes, until ctx ends.
func (t *Tracker) completeLoop(ctx context.Context, b *batches) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.wake:
		}
		for _, rec := range b.candidates() {
			if err := t.complete(ctx, b, rec); err != nil && ctx.Err() == nil {
				t.failed("complete a batch", err)
				b.mu.Lock()
				b.due[keys.BatchMeta(rec.ID)] = true // looked at again on the next change, or below
				b.mu.Unlock()
				time.AfterFunc(5*time.Second, b.poke)
			}
		}
	}
}

// complete publishes batch rec's BatchCompleted if a fresh listing of its
// members confirms that every one is terminal, then marks the record. The
// publish expects the batch subject to be empty, and carries
// client.BatchCompletedMsgID, so a second detector (another leader, or
// this one after a crash before marking the record) is refused by the
// server: at most one event per batch.
func (t *Tracker) complete(ctx context.Context, b *batches, rec client.BatchRecord) error {
	ms, err := client.ListBatchMembers(ctx, b.store.KV, rec.ID)
	if err != nil {
		return err
	}
	c := client.CountBatch(ms)
	if c.Members < rec.Members || c.Terminal != c.Members {
		return nil // the view ran ahead of a write that has not landed; a later change wakes us
	}
	now := t.now().UTC()
	ev := client.BatchCompleted{ID: rec.ID, Members: c.Members, Succeeded: c.Succeeded, Failed: c.Failed,
		DeadLettered: c.DeadLettered, Cancelled: c.Cancelled, FirstSubmit: c.FirstSubmit, CompletedAt: now}
	body, _ := json.Marshal(ev)
	m := nats.NewMsg(t.topo.BatchSubject(rec.ID))
	m.Data = body
	m.Header.Set(client.HeaderBatch, rec.ID)
	m.Header.Set(client.HeaderMsgID, client.BatchCompletedMsgID(rec.ID))
	ack, err := t.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(0))
	switch {
	case err != nil && !wrongLastSequence(err):
		return fmt.Errorf("publish the batch's completion: %w", err)
	case err == nil && !ack.Duplicate:
		t.metrics.TrackerEvent(metrics.TrackerEventBatch)
		t.log.Info("batch completed", "batch_token", client.BatchToken(rec.ID), "members", c.Members,
			"succeeded", c.Succeeded, "failed", c.Failed, "dead_lettered", c.DeadLettered, "cancelled", c.Cancelled)
	}
	return b.store.MarkCompleted(ctx, rec.ID, now)
}

// recordMember writes what a result says of its batch member: its run
// group. A member that has one already keeps it (a redelivered result, or
// a retry that moved the member on).
func (t *Tracker) recordMember(ctx context.Context, b *batches, id string, r client.Result) error {
	if !b.hasRecord(id) {
		if err := b.store.EnsureRecord(ctx, id); err != nil {
			return err
		}
	}
	_, err := b.store.UpdateMember(ctx, id, r.Key, func(m *client.BatchMember) bool {
		if m.RunGroupID != "" {
			return false
		}
		at := r.SubmittedAt.UTC()
		m.RunGroupID, m.Status, m.Terminal, m.DeadLettered, m.Reason = r.RunGroupID, "", false, false, ""
		if !at.IsZero() {
			m.SubmittedAt = &at
		}
		return true
	})
	return err
}

// observeMember writes e's group status into its batch member. e's status
// is written once its group event is out, so a member never runs ahead of
// the stream.
func (t *Tracker) observeMember(ctx context.Context, b *batches, e *Entry, g *submit.RunGroup) error {
	_, err := b.store.UpdateMember(ctx, e.BatchID, e.Key, func(m *client.BatchMember) bool {
		terminal := client.IsTerminalStatus(g.Status)
		msg := ""
		if client.IsFailedStatus(g.Status) {
			msg = g.ErrorMessage
		}
		if m.RunGroupID == e.RunGroupID && m.Status == g.Status && m.Terminal == terminal && !m.DeadLettered {
			return false
		}
		m.RunGroupID, m.Status, m.Terminal, m.ErrorMessage = e.RunGroupID, g.Status, terminal, msg
		m.DeadLettered, m.Reason = false, ""
		if m.SubmittedAt == nil && !e.SubmittedAt.IsZero() {
			at := e.SubmittedAt.UTC()
			m.SubmittedAt = &at
		}
		return true
	})
	if err == nil {
		e.MemberStatus = g.Status
	}
	return err
}

// terminateCancelled calls TerminateRunGroup for every active group of a
// cancelled batch, through the tracker's terminate budget.
//
// TerminateRunGroup has no idempotency token, and needs none: it stops the
// group's runs that have not ended, so a second call on a group stopped
// already changes nothing (the API refuses it as a group that has ended).
// An unknown outcome (a timeout, InternalError) is therefore settled by
// calling again on the next cycle, and a new leader that does not know
// what the last one called simply calls again.
func (t *Tracker) terminateCancelled(ctx context.Context, st *state, b *batches, cs *CycleStats) {
	term, ok := t.api.(Terminator)
	if !ok {
		return
	}
	// At most an interval's worth of the budget per cycle: cancelling
	// thousands of running groups must not hold the polling up for long.
	left := max(1, int(float64(t.terminateBudget.local.Limit())*t.interval.Seconds()))
	for _, tr := range st.snapshot() {
		if left == 0 {
			return // the rest next cycle
		}
		e := tr.entry
		if e.BatchID == "" || e.Unresolved || !b.cancelled(e.BatchID) || ctx.Err() != nil {
			continue
		}
		b.mu.Lock()
		done := b.terminated[tr.token] == e.RunGroupID
		b.mu.Unlock()
		if done {
			continue
		}
		req := &submit.TerminateRunGroupRequest{ProjectId: projectParam(e.ProjectID), RunGroupId: e.RunGroupID}
		if _, err := t.terminateBudget.wait(ctx); err != nil {
			return
		}
		_, err := term.TerminateRunGroup(ctx, req)
		cs.TerminateRunGroup++
		left--
		apiErr, _ := errors.AsType[*submit.Error](err)
		switch {
		case err == nil:
			t.metrics.TrackerTerminateCall(0)
		case apiErr != nil:
			t.metrics.TrackerTerminateCall(apiErr.Class)
		default:
			t.metrics.TrackerTerminateCall(submit.ClassAmbiguous)
		}
		switch {
		case err == nil:
		case apiErr != nil && apiErr.Class == submit.ClassPermanent && apiErr.Code == codeStatusNotSupported:
			// The group has ended already: nothing to stop.
		case apiErr != nil && apiErr.Class == submit.ClassPermanent && !strings.HasPrefix(apiErr.Code, "ResourceNotFound"):
			// A refusal that asking again will not change.
			t.failed("terminate a cancelled batch's run group", err) // Error() holds no request values
		default:
			// Not visible yet, throttled, or an unknown outcome: asked
			// again next cycle.
			if ctx.Err() == nil {
				t.failed("terminate a cancelled batch's run group (asked again next cycle)", err)
			}
			continue
		}
		b.mu.Lock()
		b.terminated[tr.token] = e.RunGroupID
		b.mu.Unlock()
	}
}

// newTerminateBudget is the rate TerminateRunGroup is called at: the
// tracker's share of the API rate (there is no fleet limiter of the
// action; only the tracker calls it), or 5 calls a second when the rate is
// unlimited, so that cancelling a large batch does not burst.
func newTerminateBudget(share float64) budget {
	if share <= 0 {
		share = 5
	}
	return budget{local: rate.NewLimiter(rate.Limit(share), 1)}
}
