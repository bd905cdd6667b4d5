package faultsuite

import (
	"context"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

// crashWorld is a one-request world whose persistent state (ledger, sandbox
// registry, results and dead-letter streams) is laid out exactly as a worker
// crash at one step of the state machine leaves it; then a fresh worker
// process takes the redelivered message over.
type crashWorld struct {
	*env
	key, name string
	body      []byte
	led       *ledger.Ledger
	seq       uint64 // the request's stream sequence
}

func newCrashWorld(t *testing.T, application string) *crashWorld {
	t.Helper()
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{KnownApplications: []string{appID}}})
	w := &crashWorld{env: e, key: "crash-key", name: "crash-sample", body: requestBody("crash-sample", application)}
	led, err := ledger.Open(context.Background(), e.js, e.topo.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	w.led = led
	e.publishBodies([]string{w.key}, map[string][]byte{w.key: w.body})
	s, err := e.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.seq = s.requestsLastSeq
	return w
}

// createRunGroup makes the call the crashed worker made: the sandbox now
// holds the request's run group.
func (w *crashWorld) createRunGroup() string {
	w.t.Helper()
	c, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: w.sbLn.Addr(), InsecureHTTP: true, Timeout: 5 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		w.t.Fatal(err)
	}
	req, err := submit.DecodeRunApplication(w.body, submit.DefaultLimits())
	if err != nil {
		w.t.Fatal(err)
	}
	resp, err := c.RunApplication(context.Background(), req)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.RunGroupId
}

func (w *crashWorld) put(e ledger.Entry) {
	w.t.Helper()
	e.Key = w.key
	if _, err := w.led.Put(context.Background(), e, 0); err != nil {
		w.t.Fatal(err)
	}
}

// takeOver starts a worker, waits for the request to settle and returns
// what it ended as and the API calls the worker made.
func (w *crashWorld) takeOver() (results []client.Result, dead []client.DeadLetter, runCalls, describeCalls int64, took time.Duration) {
	w.t.Helper()
	before := w.sb.Stats()
	start := time.Now()
	w.startWorker("w1")
	w.waitSettledOrEmpty(30 * time.Second)
	took = time.Since(start)
	// Settled: nothing is left to do, so no graceful stop is needed.
	for _, p := range w.workers {
		p.kill()
	}
	after := w.sb.Stats()
	rs, ds := w.outcomes()
	return rs[w.key], ds[w.key], after.Actions["RunApplication"].Arrivals - before.Actions["RunApplication"].Arrivals,
		after.Actions["DescribeRunGroups"].Arrivals - before.Actions["DescribeRunGroups"].Arrivals, took
}

// waitSettledOrEmpty waits until the request left the stream and the
// consumer holds nothing: unlike waitSettled it does not require an
// outcome, so a request acked without one (lost) is observed, not waited
// for.
func (w *crashWorld) waitSettledOrEmpty(timeout time.Duration) {
	w.t.Helper()
	w.waitFor("the request to be settled", timeout, func() bool {
		s, err := w.snapshot()
		return err == nil && s.requests == 0 && s.numPending == 0 && s.ackPending == 0
	})
	time.Sleep(300 * time.Millisecond) // a late publish would show now
}

// TestCrashAtEachStep lays out, for each step of the per-message state
// machine (internal/queue/processor.go), the persistent state a worker
// SIGKILLed right after that step leaves, and checks that the next worker
// ends the request exactly once without a second run group. The random
// SIGKILL scenario hits these windows by chance; this test hits each one
// deterministically.
func TestCrashAtEachStep(t *testing.T) {
	now := time.Now().UTC()
	call := func(outcome, code string) client.Event {
		return client.Event{At: now, Kind: "call", Outcome: outcome, Code: code, Worker: "ghost"}
	}
	intent := ledger.Entry{State: ledger.StatePending, Calls: 1,
		InFlight:   &ledger.InFlight{Owner: "ghost", Since: now.Add(-time.Minute), Deadline: now.Add(-time.Second)},
		LeaseOwner: "ghost", LeaseUntil: now.Add(-time.Second)}

	t.Run("after-intent-before-call", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		w.put(intent)
		rs, ds, runs, describes, _ := w.takeOver()
		expectResult(t, w, rs, ds)
		if runs != 1 || describes != 1 {
			t.Errorf("API calls: RunApplication %d, DescribeRunGroups %d; want 1 and 1 (reconcile, find nothing, call)", runs, describes)
		}
	})

	t.Run("after-call-created-before-outcome", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		id := w.createRunGroup()
		w.put(intent)
		rs, ds, runs, _, _ := w.takeOver()
		expectResult(t, w, rs, ds)
		if len(rs) == 1 && (rs[0].RunGroupID != id || !rs[0].Reconciled) {
			t.Errorf("result %+v, want run group %s found by reconciliation", rs[0], id)
		}
		if runs != 0 {
			t.Errorf("%d RunApplication calls, want 0: the run group existed", runs)
		}
	})

	t.Run("call-in-flight-on-another-worker-lease", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		id := w.createRunGroup()
		live := intent
		lease := 3 * time.Second
		live.LeaseUntil = time.Now().Add(lease)
		live.InFlight = &ledger.InFlight{Owner: "ghost", Since: now, Deadline: time.Now().Add(lease)}
		w.put(live)
		rs, ds, runs, _, took := w.takeOver()
		expectResult(t, w, rs, ds)
		if len(rs) == 1 && rs[0].RunGroupID != id {
			t.Errorf("result %+v, want run group %s", rs[0], id)
		}
		if runs != 0 {
			t.Errorf("%d RunApplication calls, want 0", runs)
		}
		if took < lease {
			t.Errorf("settled in %v, before the other worker's lease (%v) ended", took, lease)
		}
	})

	t.Run("after-submitted-before-result", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		id := w.createRunGroup()
		w.put(ledger.Entry{State: ledger.StateSubmitted, Calls: 1, RunGroupID: id, RequestID: "req-1",
			SubmittedAt: now, History: []client.Event{call("success", "")}})
		rs, ds, runs, describes, _ := w.takeOver()
		expectResult(t, w, rs, ds)
		if len(rs) == 1 && rs[0].RunGroupID != id {
			t.Errorf("result %+v, want run group %s", rs[0], id)
		}
		if runs+describes != 0 {
			t.Errorf("%d API calls, want 0", runs+describes)
		}
	})

	t.Run("after-result-before-ack", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		id := w.createRunGroup()
		w.put(ledger.Entry{State: ledger.StateSubmitted, Calls: 1, RunGroupID: id, RequestID: "req-1", SubmittedAt: now})
		if _, err := queue.PublishResult(context.Background(), w.js, w.topo, client.Result{Key: w.key, RunGroupID: id, Attempts: 1, Worker: "ghost"}); err != nil {
			t.Fatal(err)
		}
		rs, ds, runs, describes, _ := w.takeOver()
		expectResult(t, w, rs, ds)
		if runs+describes != 0 {
			t.Errorf("%d API calls, want 0", runs+describes)
		}
	})

	deadEntry := func(seq uint64) ledger.Entry {
		return ledger.Entry{State: ledger.StateDead, Calls: 1, DeadSequence: seq, History: []client.Event{
			call("permanent", "ResourceNotFound.ApplicationNotExist"),
			{At: now, Kind: "dead_letter", Outcome: "permanent_error", Code: "ResourceNotFound.ApplicationNotExist", Worker: "ghost"},
		}}
	}

	t.Run("after-dead-before-dlq-publish", func(t *testing.T) {
		w := newCrashWorld(t, otherID)
		w.put(deadEntry(w.seq))
		rs, ds, runs, _, _ := w.takeOver()
		expectDeadLetter(t, rs, ds, "permanent_error")
		if runs != 0 {
			t.Errorf("%d RunApplication calls, want 0", runs)
		}
	})

	t.Run("after-dlq-publish-before-ack", func(t *testing.T) {
		w := newCrashWorld(t, otherID)
		w.put(deadEntry(w.seq))
		dl := client.DeadLetter{Key: w.key, Request: w.body, Reason: "permanent_error", Attempts: 1, Deliveries: 1, StreamSequence: w.seq,
			Error: client.Failure{Class: "permanent", Code: "ResourceNotFound.ApplicationNotExist"}}
		if err := queue.PublishDeadLetter(context.Background(), w.js, w.topo, dl, fmt.Sprintf("%s/%d/%d", w.key, w.seq, 1)); err != nil {
			t.Fatal(err)
		}
		rs, ds, runs, _, _ := w.takeOver()
		expectDeadLetter(t, rs, ds, "permanent_error")
		if runs != 0 {
			t.Errorf("%d RunApplication calls, want 0", runs)
		}
	})

	// Not a crash, the cases that make Name-based reconciliation safe: a
	// late original is ours only if a call's outcome was ever unknown;
	// otherwise the Name is someone else's. A new holder of a key that may
	// have created its run group looks it up before any call.
	t.Run("late-original-after-not-found", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		id := w.createRunGroup() // the ambiguous call's run group, visible only now
		w.put(ledger.Entry{State: ledger.StatePending, Calls: 1, MaybeCreated: true,
			History: []client.Event{call("ambiguous", "InternalError"), {At: now, Kind: "lookup", Outcome: "not_found", Worker: "ghost"}}})
		rs, ds, runs, _, _ := w.takeOver()
		expectResult(t, w, rs, ds)
		if len(rs) == 1 && (rs[0].RunGroupID != id || !rs[0].Reconciled) {
			t.Errorf("result %+v, want run group %s found by the fresh lookup", rs[0], id)
		}
		if runs != 0 {
			t.Errorf("%d RunApplication calls, want 0 (a fresh lookup precedes every call of a key that may have created)", runs)
		}
	})

	t.Run("name-held-by-another-request", func(t *testing.T) {
		w := newCrashWorld(t, appID)
		w.createRunGroup() // someone else's run group with our Name; our ledger knows of no call
		rs, ds, runs, _, _ := w.takeOver()
		expectDeadLetter(t, rs, ds, "name_conflict")
		if runs != 1 {
			t.Errorf("%d RunApplication calls, want 1", runs)
		}
		if n := len(w.sb.RunGroups()); n != 1 {
			t.Errorf("%d run groups, want 1", n)
		}
	})
}

func expectResult(t *testing.T, w *crashWorld, rs []client.Result, ds []client.DeadLetter) {
	t.Helper()
	if len(rs) != 1 || len(ds) != 0 {
		t.Errorf("request ended as %d results and %d dead letters, want exactly one result", len(rs), len(ds))
	}
	if n := len(w.sb.RunGroups()); n != 1 {
		t.Errorf("%d run groups, want exactly 1", n)
	}
}

func expectDeadLetter(t *testing.T, rs []client.Result, ds []client.DeadLetter, reason string) {
	t.Helper()
	if len(rs) != 0 || len(ds) != 1 {
		t.Errorf("request ended as %d results and %d dead letters, want exactly one dead letter (lost if none)", len(rs), len(ds))
		return
	}
	if string(ds[0].Reason) != reason {
		t.Errorf("dead letter reason %s, want %s", ds[0].Reason, reason)
	}
}
