package tracker

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

var failureMessages = []string{"OOMKilled: exit 137", "disk quota exceeded on /data"}

// fastExecution runs every run for 0.2 to 2 s, about 10% of them failing.
var fastExecution = sandbox.Execution{Enabled: true, QueueDelay: 100 * time.Millisecond,
	DurationMin: 200 * time.Millisecond, DurationMax: 2 * time.Second, FailureRate: 0.1, FailureMessages: failureMessages}

// summary is what checkEvents found.
type summary struct {
	events, groupEvents, runEvents, failedGroups, failedRuns, batches int
}

// checkEvents checks the lifecycle contract on the whole status stream
// against the sandbox's final state: per request exactly one terminal group
// event, with the sandbox's status and error message; at most one event per
// (key, run, status) and nothing after a terminal event on its subject; per
// batch row exactly one terminal run event, all before the group's.
func checkEvents(t *testing.T, e *env, evs []stored) summary {
	t.Helper()
	final := map[string]sandbox.RunGroup{}
	for _, g := range e.sb.RunGroups() {
		final[g.RunGroupId] = g
	}
	type id struct{ key, run, status string }
	seen := map[id]int{}
	terminalAt := map[[2]string]uint64{} // (key, run) -> seq of its terminal event
	var s summary
	for _, st := range evs {
		ev := st.ev
		s.events++
		k := id{ev.Key, ev.RunUUID, strings.ToLower(ev.Status)}
		if seen[k]++; seen[k] == 2 {
			t.Errorf("duplicate event: key %s run %q status %s", ev.Key, ev.RunUUID, ev.Status)
		}
		if at, ok := terminalAt[[2]string{ev.Key, ev.RunUUID}]; ok {
			t.Errorf("event %d (%s) after the terminal event %d of key %s run %q", st.seq, ev.Status, at, ev.Key, ev.RunUUID)
		}
		if ev.Terminal != client.IsTerminalStatus(ev.Status) {
			t.Errorf("event %d: terminal %v for status %s", st.seq, ev.Terminal, ev.Status)
		}
		if ev.RunGroupID != e.groupOf[ev.Key] {
			t.Errorf("event %d: run group %s, want %s", st.seq, ev.RunGroupID, e.groupOf[ev.Key])
		}
		wantSubject := e.topo.StatusGroupSubject(ev.Key)
		if ev.RunUUID != "" {
			wantSubject = e.topo.StatusRunSubject(ev.Key, ev.RunUUID)
			s.runEvents++
		} else {
			s.groupEvents++
		}
		if st.subject != wantSubject {
			t.Errorf("event %d on %s, want %s", st.seq, st.subject, wantSubject)
		}
		if ev.Terminal {
			terminalAt[[2]string{ev.Key, ev.RunUUID}] = st.seq
		}
	}
	for _, key := range e.keys {
		at, ok := terminalAt[[2]string{key, ""}]
		if !ok {
			t.Errorf("key %s has no terminal group event", key)
			continue
		}
		g := final[e.groupOf[key]]
		ev := evs[slices.IndexFunc(evs, func(s stored) bool { return s.seq == at })].ev
		if !strings.EqualFold(ev.Status, g.Status) {
			t.Errorf("key %s ended %s, the sandbox says %s", key, ev.Status, g.Status)
		}
		if strings.EqualFold(ev.Status, sandbox.StatusFailed) {
			s.failedGroups++
			if ev.ErrorMessage == "" || ev.ErrorMessage != g.ErrorMessage {
				t.Errorf("key %s failed with message %q, the sandbox's is %q", key, ev.ErrorMessage, g.ErrorMessage)
			}
		}
		if ev.EndTime == nil || ev.SubmitTime == nil || len(ev.Counts) == 0 {
			t.Errorf("key %s: terminal event without times or counts: %+v", key, ev)
		}
		if rows := e.batchRows[key]; rows > 0 {
			s.batches++
			s.failedRuns += checkBatchRuns(t, e, evs, key, at, rows)
		}
	}
	return s
}

// checkBatchRuns checks one batch's run events: one terminal event per row,
// before the group's (at), failures with one of the sandbox's messages.
func checkBatchRuns(t *testing.T, e *env, evs []stored, key string, at uint64, rows int) int {
	t.Helper()
	runs := e.sb.Runs(e.groupOf[key])
	if len(runs) != rows {
		t.Fatalf("key %s: the sandbox has %d runs, want %d", key, len(runs), rows)
	}
	failed, terminal := 0, 0
	for _, r := range runs {
		for _, s := range evs {
			if s.ev.Key != key || s.ev.RunUUID != r.RunUuid || !s.ev.Terminal {
				continue
			}
			terminal++
			if s.seq > at {
				t.Errorf("key %s run %s ended (event %d) after its group (event %d)", key, r.RunUuid, s.seq, at)
			}
			if !strings.EqualFold(s.ev.Status, r.Status) || s.ev.TableRowUUID != r.TableRowUuid {
				t.Errorf("key %s run %s: event %s row %s, the sandbox says %s row %s", key, r.RunUuid, s.ev.Status, s.ev.TableRowUUID, r.Status, r.TableRowUuid)
			}
			if strings.EqualFold(s.ev.Status, sandbox.StatusFailed) {
				failed++
				if !slices.Contains(failureMessages, s.ev.ErrorMessage) {
					t.Errorf("key %s run %s failed with message %q", key, r.RunUuid, s.ev.ErrorMessage)
				}
			}
		}
	}
	if terminal != rows {
		t.Errorf("key %s: %d terminal run events, want %d", key, terminal, rows)
	}
	return failed
}

// submitMix submits n requests against the sandbox, every fifth a table
// batch of 2 to 5 rows.
func submitMix(ctx context.Context, e *env, n int) {
	for i := range n {
		rows := 0
		if i%5 == 0 {
			rows = 2 + i%4
		}
		e.submit(ctx, i, rows, "")
	}
}

// (a) Hundreds of requests, singletons and batches, with execution on and
// about 10% of runs failing: every request gets exactly one terminal
// event, failures carry the sandbox's message, every batch row its own.
func TestEveryRequestGetsOneTerminalEvent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fastExecution)
	submitMix(ctx, e, 300)
	e.publishResults(ctx)
	tr := e.startTracker(trackerOpts{rate: 20, share: 0.5})

	evs := e.waitTerminal(ctx, 40*time.Second)
	time.Sleep(500 * time.Millisecond) // a late duplicate would show now
	s := checkEvents(t, e, e.events(ctx))
	t.Logf("%d requests (%d batches): %d events (%d group, %d run), %d failed groups, %d failed batch runs; %d cycles",
		len(e.keys), s.batches, s.events, s.groupEvents, s.runEvents, s.failedGroups, s.failedRuns, tr.Stats().Cycles)
	if s.failedGroups == 0 || s.batches == 0 || len(evs) == 0 {
		t.Errorf("the mix did not exercise failures and batches: %+v", s)
	}
	waitFor(t, "the active set to empty", 5*time.Second, func() bool { return tr.Stats().Active == 0 })
	if got := metricValue(t, tr, "omicsq_tracker_events_total", "kind", "group"); int(got) != s.groupEvents {
		t.Errorf("omicsq_tracker_events_total{kind=group} = %v, want %d", got, s.groupEvents)
	}
}

// (b) Two trackers compete for the lease; the leader is killed mid-run (its
// connection cut, no release): the other takes over within about 2 TTLs and
// no event is lost or duplicated. Then the new leader is stopped gracefully
// and a third takes over at once.
func TestLeaderFailOverLosesAndDuplicatesNothing(t *testing.T) {
	ctx := context.Background()
	exec := fastExecution
	exec.DurationMin, exec.DurationMax = time.Second, 4*time.Second
	e := newEnv(t, exec)
	submitMix(ctx, e, 150)
	e.publishResults(ctx)
	const ttl = time.Second
	a := e.startTracker(trackerOpts{worker: "a", ttl: ttl})
	b := e.startTracker(trackerOpts{worker: "b", ttl: ttl})
	first := leader(t, a, b)
	waitFor(t, "the first events", 10*time.Second, func() bool { return len(e.events(ctx)) > 100 })
	before := len(e.events(ctx))
	killedAt := time.Now()
	first.crash()
	second := leader(t, a, b)
	took := time.Since(killedAt)
	if second == first || took > 2*ttl+time.Second {
		t.Errorf("fail-over took %v (ttl %v)", took, ttl)
	}

	// A third replica joins; the second leader leaves gracefully.
	c := e.startTracker(trackerOpts{worker: "c", ttl: ttl})
	waitFor(t, "more events", 10*time.Second, func() bool { return len(e.events(ctx)) > before+100 })
	handedAt := time.Now()
	second.stop()
	third := leader(t, a, b, c)
	if third == second || time.Since(handedAt) > ttl {
		t.Errorf("graceful hand-over took %v", time.Since(handedAt))
	}

	e.waitTerminal(ctx, 40*time.Second)
	time.Sleep(500 * time.Millisecond)
	s := checkEvents(t, e, e.events(ctx))
	t.Logf("%d requests: %d events, %d before the kill; fail-over in %v; %d failed groups",
		len(e.keys), s.events, before, took.Round(10*time.Millisecond), s.failedGroups)
}

// A leader that published an event and died before recording it in the
// runs bucket: the next leader finds it on the subject and does not publish
// it again, even with the de-duplication ID out of the picture (another
// Nats-Msg-Id, as after the duplicate window).
func TestEventPublishedBeforeACrashIsNotRepeated(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sandbox.Execution{})
	key := e.submit(ctx, 1, 0, "")
	e.publishResults(ctx)
	// The group stays Pending: publish its Pending event as a crashed
	// leader would have, without recording it.
	m := nats.NewMsg(e.topo.StatusGroupSubject(key))
	m.Data, _ = json.Marshal(client.StatusEvent{Key: key, RunGroupID: e.groupOf[key], Status: "Pending", ObservedAt: time.Now()})
	m.Header.Set(client.HeaderMsgID, "from-a-crashed-leader")
	if _, err := e.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	r := e.startTracker(trackerOpts{})
	waitFor(t, "two cycles", 10*time.Second, func() bool { return r.Stats().Cycles >= 2 })
	if evs := e.events(ctx); len(evs) != 1 {
		t.Fatalf("%d events, want only the crashed leader's", len(evs))
	}
	kve, err := r.runs.Get(ctx, client.KeyToken(key))
	if err != nil {
		t.Fatal(err)
	}
	var entry Entry
	if err := json.Unmarshal(kve.Value(), &entry); err != nil {
		t.Fatal(err)
	}
	if !entry.Group.has("pending") || entry.Group.Seq != 1 {
		t.Fatalf("the entry did not adopt the published event: %+v", entry.Group)
	}

	// It ends; the terminal event follows on the same subject.
	e.sb.SetRunGroupStatus(e.groupOf[key], "Succeeded")
	evs := e.waitTerminal(ctx, 10*time.Second)
	if len(evs) != 2 || evs[1].ev.Status != "Succeeded" {
		t.Fatalf("events %+v", evs)
	}
}

// Statuses are compared case-insensitively, and one the tracker does not
// know is not terminal and is counted.
func TestUnknownStatusesAreNotTerminal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sandbox.Execution{})
	key := e.submit(ctx, 1, 0, "")
	e.publishResults(ctx)
	r := e.startTracker(trackerOpts{})
	id := e.groupOf[key]
	waitFor(t, "the Pending event", 10*time.Second, func() bool { return len(e.events(ctx)) == 1 })
	e.sb.SetRunGroupStatus(id, "Queued")
	waitFor(t, "the Queued event", 10*time.Second, func() bool { return len(e.events(ctx)) == 2 })
	e.sb.SetRunGroupStatus(id, "PENDING") // emitted already, whatever the case
	time.Sleep(600 * time.Millisecond)
	e.sb.SetRunGroupStatus(id, "SUCCEEDED")
	evs := e.waitTerminal(ctx, 10*time.Second)
	var got []string
	for _, s := range evs {
		got = append(got, s.ev.Status)
	}
	if !slices.Equal(got, []string{"Pending", "Queued", "SUCCEEDED"}) || !evs[2].ev.Terminal || evs[1].ev.Terminal {
		t.Fatalf("events %v", got)
	}
	if n := metricValue(t, r, "omicsq_tracker_unknown_statuses_total"); n != 1 {
		t.Errorf("unknown statuses counted %v, want 1", n)
	}
}

// A result names no project: the tracker finds it from the ledger's digest
// of the ProjectId (the default project, or one of --tracker-projects) or an
// operator's breaker edit, and polls each group in its own project. A group
// whose project it cannot tell is counted, not polled.
func TestProjectsAreResolvedFromTheLedger(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sandbox.Execution{Enabled: true, DurationMin: 100 * time.Millisecond})
	led, err := ledger.Open(ctx, e.js, e.topo.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	pin := func(key, project string, edits map[string]string) {
		req := &submit.RunApplicationRequest{Name: "n"}
		if project != "" {
			req.ProjectId = &project
		}
		id := submission.IdentityOf(req, time.Now())
		if _, err := led.Put(ctx, ledger.Entry{Key: key, State: ledger.StateSubmitted, Identity: &id, Edits: edits}, 0); err != nil {
			t.Fatal(err)
		}
	}
	def := e.submit(ctx, 1, 0, "")
	pin(def, "", nil)
	listed := e.submit(ctx, 2, 2, "prj-listed")
	pin(listed, "prj-listed", nil)
	edited := e.submit(ctx, 3, 0, "prj-edited")
	pin(edited, "prj-typo", map[string]string{"ProjectId": "prj-edited"})
	unknown := e.submit(ctx, 4, 0, "prj-unknown")
	pin(unknown, "prj-unknown", nil)
	e.publishResults(ctx)

	r := e.startTracker(trackerOpts{ledger: led, projects: []string{"prj-listed"}})
	waitFor(t, "three groups to end", 15*time.Second, func() bool {
		n := 0
		for _, s := range e.events(ctx) {
			if s.ev.Terminal && s.ev.RunUUID == "" {
				n++
			}
		}
		return n == 3
	})
	for _, s := range e.events(ctx) {
		if s.ev.Key == unknown {
			t.Errorf("an event for the group of an unknown project: %+v", s.ev)
		}
	}
	waitFor(t, "the unresolved gauge", 5*time.Second, func() bool {
		return metricValue(t, r, "omicsq_tracker_run_groups", "status", "unresolved") == 1
	})
	if active := r.Stats().Active; active != 1 {
		t.Errorf("%d groups still followed, want the unresolved one", active)
	}

	// Its project is configured; the next leader follows it too.
	r.stop()
	e.startTracker(trackerOpts{ledger: led, projects: []string{"prj-listed", "prj-unknown"}})
	e.waitTerminal(ctx, 15*time.Second)
}

// The tracker's resources are provisioned apart from the rest (the worker
// goes on submitting without them), and bind-only mode names what is
// missing and the way out.
func TestTrackerResourcesAreProvisionedAndVerified(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	core := topo
	core.Tracker = false
	if err := queue.Provision(ctx, js, core); err != nil {
		t.Fatal(err)
	}
	if err := queue.Verify(ctx, js, core); err != nil {
		t.Fatalf("verify without the tracker: %v", err)
	}
	err := queue.Verify(ctx, js, topo)
	if err == nil || !strings.Contains(err.Error(), topo.StatusStream) || !strings.Contains(err.Error(), "--tracker=false") {
		t.Fatalf("verify with the tracker's resources missing: %v", err)
	}
	for range 2 {
		if err := queue.ProvisionTracker(ctx, js, topo); err != nil {
			t.Fatal(err)
		}
	}
	if err := queue.Verify(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, topo.StatusStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Duplicates != time.Hour || cfg.MaxAge != 30*24*time.Hour || cfg.Subjects[0] != "omicsq.status.>" || !cfg.AllowDirect {
		t.Errorf("status stream %+v", cfg)
	}
	c, err := js.Consumer(ctx, topo.ResultsStream, topo.TrackerConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if cc := c.CachedInfo().Config; cc.DeliverPolicy != jetstream.DeliverAllPolicy || cc.AckPolicy != jetstream.AckExplicitPolicy {
		t.Errorf("tracker consumer %+v", cc)
	}
}
