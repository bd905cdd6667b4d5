package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

const (
	// learnBatch is how many results one fetch asks for.
	learnBatch = 100
	// learnWait bounds one fetch: a fetch does not see the context, so this
	// is how long a stopping leader may wait for it before it hands the
	// lease over.
	learnWait = 250 * time.Millisecond
)

// learn records every result of the results stream as a runs entry, through
// the tracker's durable consumer, until ctx ends. A result is acked only
// once its entry exists, so a crash in between makes JetStream deliver it
// again and nothing is missed; a second delivery finds the entry and is
// acked.
func (t *Tracker) learn(ctx context.Context, st *state) error {
	cons, err := t.js.Consumer(ctx, t.topo.ResultsStream, t.topo.TrackerConsumer)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w", t.topo.TrackerConsumer, err)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(learnBatch, jetstream.FetchMaxWait(learnWait))
		if err != nil {
			t.failed("fetch results", err)
			_ = sleep(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			t.record(ctx, st, msg)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			t.failed("fetch results", err)
			_ = sleep(ctx, time.Second)
		}
	}
	return nil
}

// record writes the runs entry of one result message and acks it.
func (t *Tracker) record(ctx context.Context, st *state, msg jetstream.Msg) {
	if ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	var r client.Result
	if err := json.Unmarshal(msg.Data(), &r); err != nil || r.Key == "" || r.RunGroupID == "" {
		// Nothing to follow; the body is not logged (it names a request).
		t.failed("decode a result", errors.New("not a result with a key and a run group"))
		_ = msg.Term()
		return
	}
	project, resolved, err := t.resolveProject(ctx, r.Key)
	if err != nil {
		t.failed("read the ledger", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	now := t.now().UTC()
	e := Entry{Key: r.Key, RunGroupID: r.RunGroupID, ProjectID: project, Unresolved: !resolved,
		SubmittedAt: r.SubmittedAt, RecordedAt: now, UpdatedAt: now, BatchID: resultBatch(msg, r)}
	if e.BatchID != "" && st.batches != nil {
		// Before the ack, so a failure is redelivered rather than lost.
		if err := t.recordMember(ctx, st.batches, e.BatchID, r); err != nil {
			t.failed("record a batch member", err)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
	}
	if !resolved {
		t.warn("resolve a project", "cannot tell the project of a run group, so it is not followed: list its ProjectId in --tracker-projects (omicsq_tracker_run_groups{status=\"unresolved\"} counts them)",
			"key", r.Key, "run_group_id", r.RunGroupID)
	}
	token := client.KeyToken(r.Key)
	b, _ := json.Marshal(e)
	rev, err := t.runs.Create(ctx, token, b)
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		// Recorded before: a redelivery, or the previous leader's.
	case err != nil:
		t.failed("record a run group", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	default:
		st.upsert(token, e, rev, now, now)
	}
	if err := msg.Ack(); err != nil {
		t.failed("ack a result", err) // redelivered; the entry exists then
	}
}

// resultBatch is the batch of a result: its body's, else its header's
// (a result of an older worker); an unusable ID is no batch.
func resultBatch(msg jetstream.Msg, r client.Result) string {
	b := r.Batch
	if b == "" {
		b = msg.Headers().Get(client.HeaderBatch)
	}
	if b == "" || client.ValidateBatch(b) != nil {
		return ""
	}
	return b
}

// resolveProject finds the project of key's run group. A result does not
// carry it, and the ledger keeps only a digest of the ProjectId (it stores
// no request values), so the digest is compared with the default project's
// and with every --tracker-projects one. An operator's breaker edit of the
// ProjectId is kept in clear and wins.
func (t *Tracker) resolveProject(ctx context.Context, key string) (string, bool, error) {
	if t.ledger == nil {
		return "", true, nil
	}
	e, _, err := t.ledger.Get(ctx, key)
	if err != nil {
		return "", false, err
	}
	if p, ok := e.Edits[breaker.KindProject]; ok {
		return p, true, nil
	}
	if e.Identity == nil {
		return "", false, nil
	}
	for _, p := range t.projects {
		if projectDigest(p) == e.Identity.ProjectDigest {
			return p, true, nil
		}
	}
	return "", false, nil
}

// projectDigest is the ledger's digest of a ProjectId ("" is the default
// project), computed by the code that writes it.
func projectDigest(project string) string {
	req := &submit.RunApplicationRequest{}
	if project != "" {
		req.ProjectId = &project
	}
	return submission.IdentityOf(req, time.Time{}).ProjectDigest
}

// reresolve retries the project of every unresolved entry, once per
// leadership: a ProjectId added to --tracker-projects since takes effect
// with the next leader.
func (t *Tracker) reresolve(ctx context.Context, st *state) {
	for _, tr := range st.snapshot() {
		if !tr.entry.Unresolved || ctx.Err() != nil {
			continue
		}
		project, ok, err := t.resolveProject(ctx, tr.entry.Key)
		if err != nil || !ok {
			continue
		}
		e := tr.entry
		e.ProjectID, e.Unresolved = project, false
		t.write(ctx, st, tr, e)
	}
}
