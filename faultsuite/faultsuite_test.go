package faultsuite

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// scale shrinks the request counts under -short.
func scale(n int) int {
	if testing.Short() {
		return max(n/5, 20)
	}
	return n
}

// 1. Sandbox faults: 10% InternalError, 5% throttling, 5% commit-then-fail
// in every mode, and 3 s latency spikes on 3% of calls while the worker's
// API timeout is 1 s, over ~1,000 requests with a few invalid ones mixed in.
func TestSandboxFaults(t *testing.T) {
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{Faults: sandbox.Faults{
		InternalErrorP: 0.10, ThrottleP: 0.05, CommitThenFailP: 0.05,
		CommitThenFailModes: sandbox.AllCommitFailModes, Latency: 3 * time.Second, LatencyP: 0.03,
	}}})
	wl := e.publishWorkload("faults", scale(1000), 8)
	e.startWorker("w1", "--api-timeout", "1s")
	e.startWorker("w2", "--api-timeout", "1s")
	final := e.waitSettled(wl.size(), 150*time.Second)
	_ = final
	f := e.finish(wl)
	st := e.sb.Stats()
	if f.InternalErr == 0 || f.Thrt == 0 || f.Latency == 0 {
		t.Errorf("faults not all injected: %+v", st.FaultsInjected)
	}
	for _, m := range sandbox.AllCommitFailModes {
		if st.FaultsInjected.CommitThenFail[m] == 0 {
			t.Errorf("no commit-then-fail in mode %s was injected", m)
		}
	}
	if f.ClientGone == 0 {
		t.Errorf("no call outlived the client's timeout: the latency spikes tested nothing")
	}
	if f.Reconciled == 0 {
		t.Errorf("no result was reconciled by name: the ambiguous outcomes tested nothing")
	}
}

// killLoop SIGKILLs one running worker at random every 2-3 s (the first
// kill after 1 s) and restarts it at once (same id and flags), until stop
// is closed.
func (e *env) killLoop(workers []*workerProc, seed uint64, stop <-chan struct{}) <-chan error {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	wait := time.Second
	return e.killEvery(workers, func() time.Duration {
		d := wait
		wait = 2*time.Second + time.Duration(rng.Int64N(int64(time.Second)))
		return d
	}, seed, stop)
}

// 2. SIGKILL of worker processes every 2-3 s during a 2,000-request run:
// three workers, one killed at random and restarted at once; the sandbox
// commits-then-fails 5% of calls and delays 20% by 300 ms, so kills land
// mid-call. AckWait is 5 s so redeliveries happen within the run.
func TestSIGKILLWorkers(t *testing.T) {
	e := newEnv(t, envOptions{
		Sandbox: sandbox.Options{Faults: sandbox.Faults{
			CommitThenFailP: 0.05, Latency: 300 * time.Millisecond, LatencyP: 0.2, Actions: []string{"RunApplication"},
		}},
		Topology: func(tp *queue.Topology) { tp.AckWait = 5 * time.Second },
	})
	wl := e.publishWorkload("kill", scale(2000), 0)
	var ws []*workerProc
	for i := 1; i <= 3; i++ {
		ws = append(ws, e.startWorker(fmt.Sprintf("w%d", i)))
	}
	stop := make(chan struct{})
	errc := e.killLoop(ws, 2, stop)
	final := e.waitSettled(wl.size(), 180*time.Second)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	f := e.finish(wl)
	_ = final
	if f.Kills < 3 && !testing.Short() {
		t.Errorf("only %d kills happened during the run", f.Kills)
	}
	if f.Redeliveries == 0 {
		t.Errorf("no message was redelivered: the kills landed nowhere")
	}
}

// 3. The NATS server restarts mid-run: one embedded server with a fixed
// store directory is shut down when a third of the work is done, and a new
// one is started on the same port with the same store 2 s later. Workers
// (with the fleet-wide rate limiter in KV) reconnect and finish.
func TestNATSRestart(t *testing.T) {
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{Faults: sandbox.Faults{
		CommitThenFailP: 0.05, Latency: 200 * time.Millisecond, LatencyP: 0.2, Actions: []string{"RunApplication"},
	}}})
	wl := e.publishWorkload("restart", scale(1000), 4)
	e.startWorker("w1", "--rate", "300")
	e.startWorker("w2", "--rate", "300")
	e.waitFor("a third of the run groups", 60*time.Second, func() bool { return len(e.sb.RunGroups()) >= len(wl.valid)/3 })
	before := len(e.sb.RunGroups())
	down := time.Now()
	e.stopNode(0)
	time.Sleep(2 * time.Second)
	e.startNode(0)
	outage := time.Since(down)
	if before >= len(wl.valid) {
		t.Fatalf("the run finished (%d) before the restart; the test proves nothing", before)
	}
	final := e.waitSettled(wl.size(), 120*time.Second)
	_ = final
	e.finish(wl, fmt.Sprintf("run_groups_before_restart=%d outage=%s", before, outage.Round(100*time.Millisecond)))
}

// 4. A 3-node JetStream cluster (loopback routes) loses one node mid-run;
// every stream and bucket is R3 and the workers know all three URLs.
func TestClusterNodeLoss(t *testing.T) {
	e := newEnv(t, envOptions{
		Cluster: true,
		Sandbox: sandbox.Options{Faults: sandbox.Faults{
			CommitThenFailP: 0.05, Latency: 200 * time.Millisecond, LatencyP: 0.2, Actions: []string{"RunApplication"},
		}},
		Topology: func(tp *queue.Topology) { tp.Replicas = 3 },
	})
	wl := e.publishWorkload("cluster", scale(1000), 4)
	e.startWorker("w1")
	e.startWorker("w2")
	e.waitFor("a third of the run groups", 90*time.Second, func() bool { return len(e.sb.RunGroups()) >= len(wl.valid)/3 })
	// Prefer the node leading the requests stream, unless it also leads
	// the meta group; never the meta leader.
	meta := e.metaLeader()
	victim := -1
	for i, n := range e.nodes {
		if i != meta && n.ns.JetStreamIsStreamLeader("$G", e.topo.RequestsStream) {
			victim = i
		}
	}
	if victim < 0 {
		victim = (meta + 1) % len(e.nodes)
	}
	before := len(e.sb.RunGroups())
	e.stopNode(victim)
	if before >= len(wl.valid) {
		t.Fatalf("the run finished (%d) before the node loss; the test proves nothing", before)
	}
	final := e.waitSettled(wl.size(), 150*time.Second)
	_ = final
	e.finish(wl, fmt.Sprintf("stopped_node=%s meta_leader=%s run_groups_before_loss=%d",
		e.nodes[victim].opts.ServerName, e.nodes[meta].opts.ServerName, before))
}

// 5. The acceptance line, verbatim: "30% commit-then-fail over 1,000
// requests yields exactly 1,000 run groups".
func TestCommitThenFail30Percent(t *testing.T) {
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{Faults: sandbox.Faults{
		CommitThenFailP: 0.30, CommitThenFailModes: sandbox.AllCommitFailModes, CommitThenFailRandom: true,
	}}})
	n := scale(1000)
	wl := e.publishWorkload("ctf30", n, 0)
	e.startWorker("w1")
	e.startWorker("w2")
	final := e.waitSettled(wl.size(), 150*time.Second)
	_ = final
	f := e.finish(wl)
	if f.RunGroups != n {
		t.Errorf("%d run groups for %d requests, want exactly %d", f.RunGroups, n, n)
	}
	var ctf int64
	for _, c := range f.CommitFail {
		ctf += c
	}
	if float64(ctf) < 0.2*float64(n) {
		t.Errorf("only %d commit-then-fail faults were injected over %d requests", ctf, n)
	}
	if f.Reconciled == 0 {
		t.Errorf("no result was reconciled by name")
	}
}

// 7. Graceful shutdown: SIGTERM one of two workers mid-run with
// --drain-timeout 1s while 30% of calls take 1.5 s. It must exit 0 within
// the drain timeout plus a few seconds; what it could not finish it hands
// back, and the other worker completes it.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{Faults: sandbox.Faults{
		Latency: 1500 * time.Millisecond, LatencyP: 0.3, Actions: []string{"RunApplication"},
	}}})
	wl := e.publishWorkload("drain", scale(600), 3)
	w1 := e.startWorker("w1", "--api-timeout", "3s", "--drain-timeout", "1s")
	e.startWorker("w2", "--api-timeout", "3s", "--drain-timeout", "1s")
	e.waitFor("a quarter of the run groups", 60*time.Second, func() bool { return len(e.sb.RunGroups()) >= len(wl.valid)/4 })
	before := len(e.sb.RunGroups())
	took, err := w1.terminate(20 * time.Second)
	if err != nil {
		t.Errorf("SIGTERM: worker exited with %v, want status 0", err)
	}
	const drain, grace = time.Second, 5 * time.Second
	if took > drain+grace {
		t.Errorf("SIGTERM: worker took %v to exit, want at most the drain timeout (%v) + %v", took, drain, grace)
	}
	released := 0
	for _, rec := range e.logLines("message processed", w1) {
		if rec["outcome"] == "released" {
			released++
		}
	}
	drained := len(e.logLines("drain timeout: releasing in-flight messages", w1)) > 0
	if before >= len(wl.valid) {
		t.Fatalf("the run finished (%d) before SIGTERM; the test proves nothing", before)
	}
	e.waitSettled(wl.size(), 120*time.Second)
	e.finish(wl, fmt.Sprintf("sigterm_exit=%s drain_timeout_hit=%v released=%d run_groups_before_sigterm=%d",
		took.Round(10*time.Millisecond), drained, released, before))
	if !drained || released == 0 {
		t.Errorf("no in-flight message was released at the drain timeout (hit=%v, released=%d): the scenario tested only the easy path", drained, released)
	}
}

// holdAndStop runs one delivery of the single request in a worker that
// cannot finish it (the sandbox answers every call RequestLimitExceeded, so
// the worker retries in process and keeps the message), waits until the
// worker holds delivery n and has called the API for it, then stops the
// worker with stop.
func (e *env) holdAndStop(w *workerProc, n uint64, stop func(*workerProc)) {
	e.t.Helper()
	calls := e.sb.Stats().ForcedErrors
	if n > 1 {
		if err := w.restart(); err != nil {
			e.t.Fatal(err)
		}
	}
	e.waitFor(fmt.Sprintf("delivery %d to be held", n), 30*time.Second, func() bool {
		s, err := e.snapshot()
		return err == nil && s.delivered == n && s.ackPending == 1 && e.sb.Stats().ForcedErrors > calls
	})
	stop(w)
}

// 8a. A rolling-restart storm does not spend a request's deliveries:
// every delivery ends with the worker's SIGTERM while the request is still
// being retried, more times than --max-deliver allows. Each hand-back is
// deliberate and counted as such in the ledger, so once the API accepts
// calls again the request ends as its one result, not as a dead letter.
func TestMaxDeliveriesHandedBack(t *testing.T) {
	e := newEnv(t, envOptions{Topology: func(tp *queue.Topology) { tp.AckWait = 2 * time.Second; tp.MaxDeliver = 3 }})
	e.sb.ForceError("RequestLimitExceeded")
	wl := newWorkload()
	wl.valid["poison"] = "poison-sample"
	e.publishBodies([]string{"poison"}, map[string][]byte{"poison": requestBody("poison-sample", appID)})
	w := e.startWorker("w1", "--api-timeout", "1s", "--drain-timeout", "1s", "--max-attempts", "1000", "--max-retry-elapsed", "10m")
	const storms = 5
	for n := uint64(1); n <= storms; n++ {
		e.holdAndStop(w, n, func(w *workerProc) {
			if _, err := w.terminate(10 * time.Second); err != nil {
				t.Errorf("SIGTERM on delivery %d: %v", n, err)
			}
		})
	}
	e.sb.ForceError("")
	if err := w.restart(); err != nil {
		t.Fatal(err)
	}
	final := e.waitSettled(1, 30*time.Second)
	f := e.finish(wl, fmt.Sprintf("sigterms=%d max_deliver=3 deliveries=%d", storms, final.delivered))
	if f.Results != 1 || f.DLQ != 0 {
		t.Errorf("%d results and %d dead letters after a restart storm, want the result", f.Results, f.DLQ)
	}
}

// 8b. A crash loop: every delivery of the message kills its worker
// (SIGKILL while it holds it and has called the API), more often than
// --max-deliver allows (deliveries that only waited out the dead
// worker's lease are deliberate and do not count). JetStream has no delivery limit of its own (so it
// can never strand the message); the next worker sees the budget spent,
// looks up whether a run group exists, and dead-letters the request as
// max_deliveries, removing it from the requests stream.
func TestMaxDeliveriesCrashLoop(t *testing.T) {
	e := newEnv(t, envOptions{Topology: func(tp *queue.Topology) { tp.AckWait = 2 * time.Second; tp.MaxDeliver = 3 }})
	e.sb.ForceError("RequestLimitExceeded")
	e.publishBodies([]string{"crashloop"}, map[string][]byte{"crashloop": requestBody("crashloop-sample", appID)})
	// A short horizon: a killed call's outcome is unknown, so the give-up
	// path looks for its run group until then (the sandbox shows it at once).
	w := e.startWorker("w1", "--api-timeout", "1s", "--max-attempts", "1000", "--max-retry-elapsed", "10m", "--lookup-horizon", "3s")
	const crashes = 3 // = --max-deliver: the next delivery is past the budget
	for n := 1; n <= crashes; n++ {
		if n > 1 {
			if err := w.restart(); err != nil {
				t.Fatal(err)
			}
		}
		before := e.sb.Stats().ForcedErrors
		e.waitFor(fmt.Sprintf("crash %d: the worker to call", n), 30*time.Second, func() bool { return e.sb.Stats().ForcedErrors > before })
		w.kill()
		e.kills++
	}
	e.sb.ForceError("")
	time.Sleep(e.topo.AckWait + time.Second)
	if err := w.restart(); err != nil {
		t.Fatal(err)
	}
	final := e.waitSettled(1, 30*time.Second)
	e.stopWorkers()
	results, dead := e.outcomes()
	ds := dead["crashloop"]
	if len(results) != 0 || len(ds) != 1 {
		t.Fatalf("%d results and %d dead letters, want exactly one dead letter", len(results), len(ds))
	}
	if ds[0].Reason != "max_deliveries" || ds[0].Deliveries <= crashes || ds[0].Error.Code != "MaxDeliveriesExceeded" {
		t.Errorf("dead letter reason=%s deliveries=%d code=%s, want max_deliveries after more than %d deliveries",
			ds[0].Reason, ds[0].Deliveries, ds[0].Error.Code, crashes)
	}
	if n := len(e.sb.RunGroups()); n != 0 {
		t.Errorf("%d run groups, want 0", n)
	}
	if p := final.requests + final.numPending + final.ackPending; p != 0 {
		t.Errorf("%d left pending", p)
	}
	t.Logf("FIGURES %s: requests=1 deliveries=%d kills=%d dlq=1 reason=%s dead_letter_deliveries=%d run_groups=0 lost=0 pending=0 duration=%s",
		t.Name(), final.delivered, e.kills, ds[0].Reason, ds[0].Deliveries, time.Since(e.start).Round(100*time.Millisecond))
}

// 8c. The last delivery of a crash loop dies after its call created the
// run group (commit-then-fail, hang: the answer never comes) and before the
// worker learned it. The advisory path must not dead-letter a request whose
// run group exists: it must end as that run group's one result.
func TestMaxDeliveriesAfterCommittedCall(t *testing.T) {
	e := newEnv(t, envOptions{Topology: func(tp *queue.Topology) { tp.AckWait = 2 * time.Second; tp.MaxDeliver = 2 }})
	e.sb.ForceError("RequestLimitExceeded")
	wl := newWorkload()
	wl.valid["committed"] = "committed-sample"
	e.publishBodies([]string{"committed"}, map[string][]byte{"committed": requestBody("committed-sample", appID)})
	w := e.startWorker("w1", "--api-timeout", "2s", "--max-attempts", "1000", "--max-retry-elapsed", "10m")
	e.holdAndStop(w, 1, func(w *workerProc) { w.kill(); e.kills++ })

	// The last delivery: its call commits, then hangs until the client's
	// timeout; the worker is killed inside that window.
	e.sb.ForceError("")
	if err := e.sb.SetFaults(sandbox.Faults{CommitThenFailP: 1, CommitThenFailModes: []sandbox.CommitFailMode{sandbox.CommitFailHang},
		Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	if err := w.restart(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the last delivery's call to commit", 30*time.Second, func() bool {
		return e.sb.Stats().FaultsInjected.CommitThenFail[sandbox.CommitFailHang] > 0
	})
	w.kill()
	e.kills++
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(e.topo.AckWait + 500*time.Millisecond)
	if err := w.restart(); err != nil {
		t.Fatal(err)
	}
	e.waitSettled(1, 30*time.Second)
	e.finish(wl)
}
