package tracker

import (
	"context"
	"encoding/json"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// apply acts on one group as DescribeRunGroups (and, for a batch whose runs
// may have changed, DescribeRuns) reported it: first the events of its
// runs, then the group's, then the entry is written. The group's terminal
// event waits until every listed run's events are out, so a reader of the
// stream sees a batch's rows end before the batch.
func (t *Tracker) apply(ctx context.Context, st *state, tr tracked, g *submit.RunGroup, runs []submit.Run, listed bool, cs *CycleStats) {
	now := t.now()
	e := tr.entry
	neededRuns := needsRuns(tr.entry, g)
	dirty := e.observe(g)
	runsOK := listed
	for i := range runs {
		changed, err := t.applyRun(ctx, &e, &runs[i], now, cs)
		dirty = dirty || changed
		if err != nil {
			runsOK = false
			t.failed("publish a run event", err)
			cs.Errors++
		}
	}
	if neededRuns && !runsOK {
		// Keep the old counts so that the next cycle lists the runs again.
		e.Status, e.Counts = tr.entry.Status, tr.entry.Counts
	}
	if !e.Group.Terminal && !e.Group.has(g.Status) && (!client.IsTerminalStatus(g.Status) || !e.Batch || runsOK) {
		ev := groupEvent(&e, g, now)
		added, err := t.publishEvent(ctx, t.topo.StatusGroupSubject(e.Key), ev, &e.Group)
		if err != nil {
			t.failed("publish a group event", err)
			cs.Errors++
		} else {
			dirty = true
			t.published(added, metrics.TrackerEventGroup, g.Status, cs)
			if added && ev.Terminal {
				t.metrics.TrackerTerminal(g.Status, sinceSubmit(&e, ev))
			}
		}
	}
	batched := st.batches != nil && e.BatchID != ""
	if batched && e.Group.has(g.Status) && e.MemberStatus != g.Status {
		if err := t.observeMember(ctx, st.batches, &e, g); err != nil {
			t.failed("write a batch member", err)
			cs.Errors++
		} else {
			dirty = true
		}
	}
	// A batch member's entry stays active until its member record has the
	// terminal status too, so a failed write is made again next cycle.
	e.Terminal = e.Group.Terminal && (!batched || e.MemberStatus == g.Status)
	if dirty || t.stale(tr, now) {
		t.write(ctx, st, tr, e)
	}
}

// applyRun publishes the event of one batch run's status if it is new, and
// records it in e.
func (t *Tracker) applyRun(ctx context.Context, e *Entry, r *submit.Run, now time.Time, cs *CycleStats) (bool, error) {
	if e.Runs == nil {
		e.Runs = make(map[string]RunRecord)
	}
	rec := e.Runs[r.RunUuid]
	changed := rec.Status != r.Status || rec.TableRowUUID != r.TableRowUuid
	rec.Status, rec.TableRowUUID = r.Status, r.TableRowUuid
	defer func() { e.Runs[r.RunUuid] = rec }()
	if rec.Terminal || rec.has(r.Status) {
		return changed, nil
	}
	added, err := t.publishEvent(ctx, t.topo.StatusRunSubject(e.Key, r.RunUuid), runEvent(e, r, now), &rec.Emitted)
	if err != nil {
		return changed, err
	}
	t.published(added, metrics.TrackerEventRun, r.Status, cs)
	return true, nil
}

// published counts an event this leader added to the stream.
func (t *Tracker) published(added bool, kind, status string, cs *CycleStats) {
	if !added {
		return
	}
	cs.Events++
	t.metrics.TrackerEvent(kind)
	if !isKnownStatus(status) {
		t.metrics.TrackerUnknownStatus()
	}
}

// stale reports whether an active entry must be rewritten so that the
// bucket's TTL does not expire it while its group runs.
func (t *Tracker) stale(tr tracked, now time.Time) bool {
	return t.runsTTL > 0 && !tr.written.IsZero() && now.Sub(tr.written) > t.runsTTL/2
}

// write stores e over tr's revision. A conflict means someone else wrote
// the entry (a previous leader's late write): its version is taken, and
// the next cycle works from it; the subjects' sequences keep the events
// once-only meanwhile.
func (t *Tracker) write(ctx context.Context, st *state, tr tracked, e Entry) {
	now := t.now().UTC()
	e.UpdatedAt = now
	b, err := json.Marshal(e)
	if err != nil {
		t.failed("encode a runs entry", err)
		return
	}
	rev, err := t.runs.Update(ctx, tr.token, b, tr.rev)
	if err == nil {
		st.upsert(tr.token, e, rev, now, now)
		return
	}
	t.failed("write a runs entry", err)
	if kve, err := t.runs.Get(ctx, tr.token); err == nil {
		st.apply(kve, now, func(err error) { t.failed("decode a runs entry", err) })
	}
}
