package rerun

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/sandbox"
)

// succeeding is the execution for the groups retries create: they succeed.
var succeeding = sandbox.Execution{Enabled: true, QueueDelay: 50 * time.Millisecond, DurationMin: 200 * time.Millisecond}

// ambiguousRetries makes every RetryRuns call create its group and then
// fail its answer (a 502 or a dropped connection), and lookups lag
// creation by lag.
func ambiguousRetries(t *testing.T, sb *sandbox.Server, lag time.Duration) {
	t.Helper()
	if err := sb.SetFaults(sandbox.Faults{CommitThenFailP: 1, Actions: []string{"RetryRuns"},
		CommitThenFailModes: []sandbox.CommitFailMode{sandbox.CommitFailBadGateway, sandbox.CommitFailDrop}}); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetVisibility(sandbox.Visibility{Lag: lag}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) record(key string) Record {
	e.t.Helper()
	kv, err := e.js.KeyValue(e.t.Context(), e.topo.RetriesBucket)
	if err != nil {
		e.t.Fatal(err)
	}
	kve, err := kv.Get(e.t.Context(), client.KeyToken(key))
	if err != nil {
		e.t.Fatal(err)
	}
	var r Record
	if err := json.Unmarshal(kve.Value(), &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// The acceptance of issue 13: with commit-then-fail on every RetryRuns call
// and lookups lagging creation, retrying a failed group creates exactly one
// group (the sandbox's registry says so), found by Name; running the retry
// again creates none; the tracker follows the new group to its end.
func TestRetryWithCommitThenFailCreatesExactlyOneGroup(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0001"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	if err := e.sb.SetExecution(succeeding); err != nil {
		t.Fatal(err)
	}
	ambiguousRetries(t, e.sb, 1500*time.Millisecond)

	r := e.retrier("cli", nil)
	start := time.Now()
	out, err := r.Retry(t.Context(), key, Options{Trigger: TriggerManual, CallCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("retry with its answer lost and lookups lagging 1.5 s: found after %v, %d RetryRuns call(s)",
		time.Since(start).Round(time.Millisecond), e.sb.Stats().Actions["RetryRuns"].Arrivals)
	created := e.retriesOf(g1)
	if len(created) != 1 || e.totalRetries() != 1 {
		t.Fatalf("the sandbox created %v from %s (%d in all), want exactly one", created, g1, e.totalRetries())
	}
	if out.Kind != KindFound || out.NewGroup != created[0] || out.SourceGroup != g1 {
		t.Fatalf("outcome %+v, want found %s from %s", out, created[0], g1)
	}
	rec := e.record(key)
	if a := rec.Attempts[0]; len(rec.Attempts) != 1 || a.State != StateCreated || !a.Reconciled || a.Calls != 1 || a.NewGroup != created[0] {
		t.Fatalf("record %+v", rec)
	}
	if rec.Holder != "" {
		t.Errorf("a settled record is still held by %s", rec.Holder)
	}
	for _, g := range e.sb.RunGroups() {
		if g.RunGroupId != created[0] {
			continue
		}
		if g.Option == nil || g.Option.UseCallCache == nil || !*g.Option.UseCallCache ||
			g.Option.FailureMode == nil || *g.Option.FailureMode != "NoNewCalls" {
			t.Errorf("the retry's options are %+v: want UseCallCache on and the group's FailureMode kept", g.Option)
		}
	}

	// Again, while the new group runs and after it succeeded: no call.
	again, err := r.Retry(t.Context(), key, Options{Trigger: TriggerManual, CallCache: true})
	if err != nil || again.Kind != KindRefused || again.SourceGroup != created[0] {
		t.Fatalf("second retry: %+v, %v; want refused for %s", again, err, created[0])
	}
	e.waitEnded(key, created[0])
	again, err = r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
	if err != nil || again.Kind != KindRefused || again.Reason != ReasonSucceeded {
		t.Fatalf("retry after success: %+v, %v; want refused %s", again, err, ReasonSucceeded)
	}
	if n := e.totalRetries(); n != 1 {
		t.Fatalf("the sandbox created %d retry groups, want 1", n)
	}
	checkFollowed(t, e, key, g1, created[0])
}

// checkFollowed checks the key's group subject: g1's events, then g2's,
// each status once per group, g2's naming its source, and each group's
// terminal event last among its own; the key's state is g2's.
func checkFollowed(t *testing.T, e *env, key, g1, g2 string) {
	t.Helper()
	st, err := e.cl.State(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status == nil || st.Status.RunGroupID != g2 || st.Phase() != client.PhaseSucceeded || st.Status.RetryOf != g1 {
		t.Fatalf("state %+v (phase %s), want %s succeeded, a retry of %s", st.Status, st.Phase(), g2, g1)
	}
	s, err := e.js.Stream(t.Context(), e.topo.StatusStream)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var order []string
	terminal := map[string]bool{}
	for seq := uint64(1); ; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			break
		}
		if m.Subject != e.topo.StatusGroupSubject(key) {
			continue
		}
		var ev client.StatusEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		id := ev.RunGroupID + "/" + strings.ToLower(ev.Status)
		if seen[id] {
			t.Errorf("duplicate event %s", id)
		}
		if terminal[ev.RunGroupID] {
			t.Errorf("event %s after its group's terminal event", id)
		}
		seen[id], terminal[ev.RunGroupID] = true, ev.Terminal
		if len(order) == 0 || order[len(order)-1] != ev.RunGroupID {
			order = append(order, ev.RunGroupID)
		}
		if want := map[string]string{g1: "", g2: g1}[ev.RunGroupID]; ev.RetryOf != want {
			t.Errorf("event %s: retry_of %q, want %q", id, ev.RetryOf, want)
		}
	}
	if len(order) != 2 || order[0] != g1 || order[1] != g2 || !seen[g1+"/failed"] || !seen[g2+"/succeeded"] {
		t.Fatalf("group events by group %v, seen %v; want %s failed then %s succeeded", order, seen, g1, g2)
	}
}

// A call that did nothing but answered ambiguously (InternalError) is not
// believed: the next call waits until the horizon has passed with nothing
// visible, and after MaxCalls such calls the attempt ends refused.
func TestRetryCallsAgainOnlyAfterTheHorizon(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0002"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	if err := e.sb.SetFaults(sandbox.Faults{InternalErrorP: 1, Actions: []string{"RetryRuns"}}); err != nil {
		t.Fatal(err)
	}
	const horizon = 700 * time.Millisecond
	r := e.retrier("cli", func(c *Config) { c.Horizon, c.MaxCalls = horizon, 2 })
	start := time.Now()
	out, err := r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if out.Kind != KindRefused || out.Reason != ReasonNothingVisible || out.Code != "InternalError" {
		t.Fatalf("outcome %+v, want refused %s after InternalError", out, ReasonNothingVisible)
	}
	if calls := e.sb.Stats().Actions["RetryRuns"].Calls["internal_error"]; calls != 2 {
		t.Fatalf("%d RetryRuns calls, want 2 (MaxCalls)", calls)
	}
	if took < 2*horizon {
		t.Fatalf("two calls and their horizons took %v, less than two horizons", took)
	}
	if n := e.totalRetries(); n != 0 {
		t.Fatalf("%d groups created", n)
	}
	// Once the API recovers, a retry starts a new attempt and creates one.
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}
	out, err = r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
	if err != nil || out.Kind != KindCreated || out.Attempt != 2 || len(e.retriesOf(g1)) != 1 {
		t.Fatalf("retry after recovery: %+v, %v; sandbox %v", out, err, e.sb.Retries())
	}
}

// Two retries of one key at once (a CLI and the auto policy) make one
// group: the record's compare-and-set lets one call, the other is told.
func TestConcurrentRetriesOfOneKeyCreateOneGroup(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0003"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	ambiguousRetries(t, e.sb, time.Second)
	rs := []*Retrier{e.retrier("cli", nil), e.retrier("auto", nil)}
	outs := make([]Outcome, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			var err error
			outs[i], err = r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := e.totalRetries(); n != 1 {
		t.Fatalf("the sandbox created %d groups (%v), want 1; outcomes %+v", n, e.sb.Retries(), outs)
	}
	kinds := map[Kind]int{}
	for _, o := range outs {
		kinds[o.Kind]++
	}
	if kinds[KindFound] != 1 || kinds[KindBusy]+kinds[KindRefused] != 1 {
		t.Fatalf("outcomes %+v: want one found, the other busy or refused", outs)
	}
}

// A retry stopped while its outcome is unknown leaves the attempt open and
// released; the next retry resumes it (lookups, no new call) and finds the
// group the first call created.
func TestStoppedRetryIsResumedWithoutASecondCall(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0004"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	ambiguousRetries(t, e.sb, 2*time.Second)
	r := e.retrier("cli", nil)
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	out, err := r.Retry(ctx, key, Options{Trigger: TriggerManual})
	if err != nil || out.Kind != KindUnresolved {
		t.Fatalf("stopped retry: %+v, %v; want unresolved", out, err)
	}
	rec := e.record(key)
	if a := rec.open(); a == nil || !a.MaybeCreated || rec.Holder != "" {
		t.Fatalf("record after a stop %+v: want an open attempt, released", rec)
	}
	// Another process (a new CLI run) takes it over at once.
	out, err = e.retrier("cli-2", nil).Retry(t.Context(), key, Options{Trigger: TriggerManual})
	if err != nil || out.Kind != KindFound || out.Attempt != 1 {
		t.Fatalf("resumed retry: %+v, %v; want found in attempt 1", out, err)
	}
	if calls := e.sb.Stats().Actions["RetryRuns"].Arrivals; calls != 1 || e.totalRetries() != 1 {
		t.Fatalf("%d RetryRuns calls, %d groups; want 1 and 1", calls, e.totalRetries())
	}
}

// Nothing to retry: an unknown key, and a group still running.
func TestRetryRefusesWhatIsNotAFailedGroup(t *testing.T) {
	e := newEnv(t, sandbox.Execution{Enabled: true, QueueDelay: time.Hour})
	r := e.retrier("cli", nil)
	out, err := r.Retry(t.Context(), "lims-unknown", Options{})
	if err != nil || out.Kind != KindRefused || out.Reason != ReasonNotTracked {
		t.Fatalf("unknown key: %+v, %v", out, err)
	}
	const key = "lims-S-0005"
	g1 := e.submit(key)
	waitFor(t, "the tracker to record "+g1, 10*time.Second, func() bool { en, ok := e.entry(key); return ok && en.Status != "" })
	out, err = r.Retry(t.Context(), key, Options{})
	if err != nil || out.Kind != KindRefused || out.Reason != ReasonNotEnded || out.Status != "Pending" {
		t.Fatalf("pending group: %+v, %v", out, err)
	}
	if e.sb.Stats().Actions["RetryRuns"].Arrivals != 0 {
		t.Fatal("RetryRuns was called")
	}
}

// A group that an unknown outcome created but that became visible only
// after the horizon (the one case the horizon cannot cover) is adopted by
// the next retry of the key instead of being joined by a second one.
func TestGroupVisibleOnlyAfterTheHorizonIsAdoptedNotDuplicated(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0006"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	ambiguousRetries(t, e.sb, 2*time.Second)
	r := e.retrier("cli", func(c *Config) { c.Horizon, c.MaxCalls = 300*time.Millisecond, 1 })
	out, err := r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
	if err != nil || out.Kind != KindRefused || out.Reason != ReasonNothingVisible {
		t.Fatalf("first retry: %+v, %v; want refused %s", out, err, ReasonNothingVisible)
	}
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the group becomes visible
	out, err = r.Retry(t.Context(), key, Options{Trigger: TriggerManual})
	created := e.retriesOf(g1)
	if err != nil || out.Kind != KindFound || len(created) != 1 || out.NewGroup != created[0] {
		t.Fatalf("second retry: %+v, %v; the sandbox created %v", out, err, created)
	}
	if calls := e.sb.Stats().Actions["RetryRuns"].Arrivals; calls != 1 {
		t.Fatalf("%d RetryRuns calls, want 1", calls)
	}
	if en, _ := e.entry(key); en.RunGroupID != created[0] || en.RetryOf != g1 {
		t.Fatalf("runs entry %+v: want it to follow %s", en, created[0])
	}
}

// A holder that crashed mid-attempt leaves its claim: others are told busy
// until it expires, then one resumes the attempt — lookups, no new call.
func TestCrashedHoldersClaimIsWaitedForThenResumed(t *testing.T) {
	e := newEnv(t, failing)
	const key = "lims-S-0007"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	ambiguousRetries(t, e.sb, 2500*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if out, err := e.retrier("cli", nil).Retry(ctx, key, Options{Trigger: TriggerManual}); err != nil || out.Kind != KindUnresolved {
		t.Fatalf("first retry: %+v, %v", out, err)
	}
	// As a crash would have left it: still claimed, for a while.
	kv, err := e.js.KeyValue(t.Context(), e.topo.RetriesBucket)
	if err != nil {
		t.Fatal(err)
	}
	rec := e.record(key)
	rec.Holder, rec.HeldUntil = "crashed/00000000", time.Now().Add(time.Second)
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(t.Context(), client.KeyToken(key), b); err != nil {
		t.Fatal(err)
	}
	r := e.retrier("auto", nil)
	if out, err := r.Retry(t.Context(), key, Options{Trigger: TriggerAuto}); err != nil || out.Kind != KindBusy {
		t.Fatalf("retry while claimed: %+v, %v; want busy", out, err)
	}
	time.Sleep(1200 * time.Millisecond)
	out, err := r.Retry(t.Context(), key, Options{Trigger: TriggerAuto})
	if err != nil || out.Kind != KindFound || out.Attempt != 1 {
		t.Fatalf("retry after the claim expired: %+v, %v; want found in attempt 1", out, err)
	}
	if calls := e.sb.Stats().Actions["RetryRuns"].Arrivals; calls != 1 || e.totalRetries() != 1 {
		t.Fatalf("%d RetryRuns calls, %d groups; want 1 and 1", calls, e.totalRetries())
	}
}
