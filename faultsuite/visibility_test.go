package faultsuite

import (
	"github.com/omicsq/omicsq/client"

	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

// killEvery SIGKILLs one running worker at random, next() apart, and
// restarts it at once (same id and flags), until stop is closed.
func (e *env) killEvery(workers []*workerProc, next func() time.Duration, seed uint64, stop <-chan struct{}) <-chan error {
	errc := make(chan error, 1)
	rng := rand.New(rand.NewPCG(seed, 0x6b111))
	go func() {
		defer close(errc)
		for {
			select {
			case <-stop:
				return
			case <-time.After(next()):
			}
			w := workers[rng.IntN(len(workers))]
			w.kill()
			e.mu.Lock()
			e.kills++
			e.mu.Unlock()
			if err := w.restart(); err != nil {
				errc <- fmt.Errorf("restart %s: %v", w.id, err)
				return
			}
		}
	}()
	return errc
}

// blackBox is the acceptance run of the rebuilt state machine: 3 worker
// processes, one NATS server, the sandbox hiding new run groups from
// lookups for lag (fixed, or random up to lagMax), 30% commit-then-fail,
// 10% InternalError, one worker SIGKILLed every 5 s. Judged from the
// sandbox's registry by verify: one run group per request, one result
// each, no dead letter, nothing pending, never two calls open for a Name.
func blackBox(t *testing.T, prefix string, vis sandbox.Visibility) {
	e := newEnv(t, envOptions{
		Sandbox: sandbox.Options{
			Faults: sandbox.Faults{CommitThenFailP: 0.30, InternalErrorP: 0.10, Actions: []string{"RunApplication"},
				CommitThenFailModes: sandbox.AllCommitFailModes},
			Visibility: vis,
		},
		Topology: func(tp *queue.Topology) { tp.AckWait = 5 * time.Second },
	})
	wl := e.publishWorkload(prefix, scale(600), 0)
	var ws []*workerProc
	for i := 1; i <= 3; i++ {
		ws = append(ws, e.startWorker(fmt.Sprintf("w%d", i), "--concurrency", "64"))
	}
	stop := make(chan struct{})
	errc := e.killEvery(ws, func() time.Duration { return 5 * time.Second }, 11, stop)
	e.waitSettled(wl.size(), 300*time.Second)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	f := e.finish(wl, fmt.Sprintf("lag=%s lag_max=%s", vis.Lag, vis.LagMax))
	if f.Reconciled == 0 || f.DuplicateName == 0 {
		t.Errorf("reconciled %d, DuplicateName answers %d: the lagged lookups tested nothing", f.Reconciled, f.DuplicateName)
	}
	if f.Kills == 0 {
		t.Errorf("no worker was killed")
	}
}

func TestExactlyOnceWithLookupsLagging5s(t *testing.T) {
	blackBox(t, "lag5", sandbox.Visibility{Lag: 5 * time.Second})
}

func TestExactlyOnceWithLookupsLaggingRandomly(t *testing.T) {
	blackBox(t, "lagrnd", sandbox.Visibility{Lag: 0, LagMax: 20 * time.Second, ReorderPages: true})
}

// newLaggingWorld is a crash world whose sandbox hides new run groups from
// lookups for lag.
func newLaggingWorld(t *testing.T, lag time.Duration) *crashWorld {
	w := newCrashWorld(t, appID)
	if err := w.sb.SetVisibility(sandbox.Visibility{Lag: lag}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *crashWorld) identity() ledger.Identity {
	w.t.Helper()
	req, err := submit.DecodeRunApplication(w.body, submit.DefaultLimits())
	if err != nil {
		w.t.Fatal(err)
	}
	return submission.IdentityOf(req, time.Now().Add(-time.Minute))
}

// Scenario 1 of issue 11: an ambiguous call created the run group, but
// lookups do not see it for 4 s. The old state machine looked, found
// nothing, resubmitted, got DuplicateName, and dead-lettered the request as
// reconcile_exhausted within a second, beside its own paid run. Now it keeps
// looking until the group is visible.
func TestLookupLagAfterAnAmbiguousCall(t *testing.T) {
	w := newLaggingWorld(t, 4*time.Second)
	id := w.createRunGroup() // the crashed worker's call; hidden from lookups for 4 s
	now := time.Now().UTC()
	pin := w.identity()
	w.put(ledger.Entry{State: ledger.StatePending, Calls: 1, Identity: &pin,
		InFlight: &ledger.InFlight{Owner: "ghost", Since: now.Add(-time.Minute), Deadline: now.Add(-time.Second)}})
	rs, ds, runs, describes, took := w.takeOver()
	expectResult(t, w, rs, ds)
	if len(rs) == 1 && (rs[0].RunGroupID != id || !rs[0].Reconciled) {
		t.Errorf("result %+v, want run group %s found by a lookup", rs[0], id)
	}
	if runs > 1 {
		t.Errorf("%d RunApplication calls, want at most 1 (answered DuplicateName)", runs)
	}
	if n := len(w.sb.RunGroups()); n != 1 {
		t.Errorf("%d run groups, want 1", n)
	}
	t.Logf("settled in %v with %d RunApplication and %d DescribeRunGroups calls", took.Round(100*time.Millisecond), runs, describes)
}

// Scenario 2 of issue 11 (the worker's side; enqueue refuses it up front
// too): a redrive that edits the Name of a key whose call may have created
// its run group is refused as identity_changed and submits nothing; a plain
// redrive of a reconcile_exhausted key whose group has become visible
// publishes its result with no RunApplication call.
func TestRedriveOfAMaybeCreatedKey(t *testing.T) {
	w := newCrashWorld(t, appID)
	id := w.createRunGroup()
	pin := w.identity()
	w.put(ledger.Entry{State: ledger.StateDead, Calls: 2, MaybeCreated: true, Identity: &pin, DeadSequence: w.seq,
		History: []client.Event{{At: time.Now().UTC(), Kind: "dead_letter", Outcome: "reconcile_exhausted", Code: "InvalidParameterValue.DuplicateName"}}})
	// Only the ledger says the key is dead: the DLQ is empty when the first
	// redrive goes out. So the redrives are published as messages
	// (redriveMessage), not with the client's Redrive, whose delete would
	// fail for the first and, for the second, remove one of the dead letters
	// the first take-over stores (the original's reconcile_exhausted,
	// republished from the ledger, and the identity_changed refusal).
	edited := requestBody("crash-sample-renamed", appID)
	w.redriveMessage(w.key, 1, edited)
	rs, ds, runs, _, _ := w.takeOver()
	if len(rs) != 0 {
		t.Errorf("the edited redrive produced a result %+v", rs)
	}
	var refused bool
	for _, d := range ds {
		if d.Reason == "identity_changed" {
			refused = true
		}
	}
	if !refused {
		t.Errorf("dead letters %+v, want one identity_changed", ds)
	}
	if runs != 0 || len(w.sb.RunGroups()) != 1 {
		t.Errorf("%d RunApplication calls and %d run groups after the edited redrive, want 0 and 1", runs, len(w.sb.RunGroups()))
	}

	// The plain redrive: looked up first, found, published; no call.
	w.redriveMessage(w.key, 2, w.body)
	rs, _, runs, describes, _ := w.takeOver()
	if len(rs) != 1 || rs[0].RunGroupID != id || !rs[0].Reconciled {
		t.Errorf("plain redrive: results %+v, want run group %s reconciled", rs, id)
	}
	if runs != 0 || describes == 0 {
		t.Errorf("plain redrive: %d RunApplication and %d DescribeRunGroups calls, want 0 and at least 1", runs, describes)
	}
}

// Scenario 3 of issue 11: another sample's run group holds our Name with
// the same application and environment. A key whose call may have created
// its run group must not claim it (the input differs): name_conflict.
func TestOwnershipComparesTheWholeRequest(t *testing.T) {
	w := newCrashWorld(t, appID)
	theirs := w.body
	// Same Name, other input: made by somebody else before our first call.
	w.body = []byte(string(theirs[:len(theirs)-1]) + `,"Description":"another patient"}`)
	w.createRunGroup()
	w.body = theirs
	pin := w.identity()
	now := time.Now().UTC()
	w.put(ledger.Entry{State: ledger.StatePending, Calls: 1, Identity: &pin,
		InFlight: &ledger.InFlight{Owner: "ghost", Since: now.Add(-time.Minute), Deadline: now.Add(-time.Second)}})
	rs, ds, _, _, _ := w.takeOver()
	if len(rs) != 0 {
		t.Fatalf("claimed another request's run group: %+v", rs)
	}
	expectDeadLetter(t, rs, ds, "name_conflict")
}

// Scenario 4 of issue 11: never two RunApplication calls in flight for one
// key, judged by the sandbox, with the limiter stalled far past AckWait:
// 3 workers share 1 call/s, AckWait is 2 s, every call takes 1.5 s, and
// each of 12 keys is published three times under distinct message IDs (a
// producer resending after the de-duplication window).
func TestNoTwoCallsInFlightForOneKey(t *testing.T) {
	e := newEnv(t, envOptions{
		Sandbox: sandbox.Options{Faults: sandbox.Faults{Latency: 1500 * time.Millisecond, LatencyP: 1, Actions: []string{"RunApplication"}}},
		Topology: func(tp *queue.Topology) {
			tp.AckWait = 2 * time.Second
		},
	})
	wl := e.publishWorkload("stall", 12, 0)
	for k, name := range wl.valid {
		for copyN := 1; copyN <= 2; copyN++ {
			e.republish(k, fmt.Sprintf("%s/copy/%d", k, copyN), requestBody(name, appID))
		}
	}
	for i := 1; i <= 3; i++ {
		e.startWorker(fmt.Sprintf("w%d", i), "--rate", "1", "--api-timeout", "5s")
	}
	e.waitFor("every key's result", 120*time.Second, func() bool {
		rs, _ := e.outcomes()
		return len(rs) == len(wl.valid)
	})
	e.waitSettled(wl.size(), 60*time.Second)
	f := e.finish(wl) // verify checks the sandbox's per-Name overlap count
	st := e.sb.Stats()
	if st.MaxConcurrentRunApplicationPerName != 1 {
		t.Errorf("max RunApplication calls open at once for one Name: %d, want 1", st.MaxConcurrentRunApplicationPerName)
	}
	t.Logf("RunApplication calls %d for %d keys (36 messages)", f.RunCalls, len(wl.valid))
}
