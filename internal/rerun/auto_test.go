package rerun

import (
	"context"
	"regexp"

	"github.com/omicsq/omicsq/client"
	"sync"
	"testing"
	"time"
)

// startAuto runs the auto-retry policy until the test ends and waits for
// its consumer, which starts at the stream's end.
func (e *env) startAuto(max int, match string) *[]Outcome {
	e.t.Helper()
	var mu sync.Mutex
	outs := &[]Outcome{}
	a := &Auto{JS: e.js, Topology: e.topo, Retrier: e.retrier("worker-1", nil), Max: max,
		Match: regexp.MustCompile(match), Provision: true, By: "worker-1", Log: quiet(),
		OnOutcome: func(o Outcome) { mu.Lock(); *outs = append(*outs, o); mu.Unlock() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	waitFor(e.t, "the auto-retry consumer", 5*time.Second, func() bool {
		_, err := e.js.Consumer(e.t.Context(), e.topo.StatusStream, e.topo.AutoRetryConsumer)
		return err == nil
	})
	return outs
}

// The policy retries a failed group whose message matches, and the groups
// its retries create, until N groups were created for the key — with
// commit-then-fail on every RetryRuns call and lagging lookups.
func TestAutoRetryRetriesMatchingFailuresUpToN(t *testing.T) {
	e := newEnv(t, failing)
	ambiguousRetries(t, e.sb, 500*time.Millisecond)
	e.startAuto(2, "OOMKilled|disk quota")
	const key = "lims-S-0101"
	g1 := e.submit(key)
	waitFor(t, "two retries", 30*time.Second, func() bool { return e.totalRetries() >= 2 })
	g2 := e.retriesOf(g1)
	if len(g2) != 1 {
		t.Fatalf("retries %v: want one from %s", e.sb.Retries(), g1)
	}
	g3 := e.retriesOf(g2[0])
	if len(g3) != 1 {
		t.Fatalf("retries %v: want one from %s", e.sb.Retries(), g2[0])
	}
	// The third group fails too; the policy stops at N.
	e.waitEnded(key, g3[0])
	time.Sleep(2 * time.Second)
	if n := e.totalRetries(); n != 2 {
		t.Fatalf("%d groups retried (%v), want 2", n, e.sb.Retries())
	}
	rec := e.record(key)
	if len(rec.Attempts) != 2 || rec.Created() != 2 || rec.Attempts[0].Trigger != TriggerAuto {
		t.Fatalf("record %+v", rec)
	}
}

// A failure whose message does not match is left alone.
func TestAutoRetryLeavesOtherFailures(t *testing.T) {
	e := newEnv(t, failing)
	e.startAuto(3, "^disk quota")
	const key = "lims-S-0102"
	g1 := e.submit(key)
	e.waitEnded(key, g1)
	waitFor(t, "the policy to read the terminal event", 10*time.Second, func() bool {
		c, err := e.js.Consumer(e.t.Context(), e.topo.StatusStream, e.topo.AutoRetryConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(e.t.Context())
		return err == nil && info.AckFloor.Stream > 0 && info.NumAckPending == 0 && info.NumPending == 0
	})
	if n := e.totalRetries(); n != 0 || e.sb.Stats().Actions["RetryRuns"].Arrivals != 0 {
		t.Fatalf("%d groups retried for a message that does not match", n)
	}
}

// The policy reruns failed groups whose message matches, never a group
// somebody stopped (Terminated: an operator, a cancelled batch), nor a
// run's event.
func TestAutoQualifies(t *testing.T) {
	a := &Auto{Match: regexp.MustCompile(".*")}
	for _, c := range []struct {
		ev   client.StatusEvent
		want bool
	}{
		{client.StatusEvent{Status: "Failed", Terminal: true, ErrorMessage: "OOMKilled"}, true},
		{client.StatusEvent{Status: "Terminated", Terminal: true}, false},
		{client.StatusEvent{Status: "TERMINATED", Terminal: true}, false},
		{client.StatusEvent{Status: "Succeeded", Terminal: true}, false},
		{client.StatusEvent{Status: "Failed", Terminal: true, RunUUID: "r-1"}, false},
		{client.StatusEvent{Status: "Failed"}, false},
	} {
		if got := a.qualifies(c.ev); got != c.want {
			t.Errorf("qualifies(%s terminal=%v run=%q) = %v, want %v", c.ev.Status, c.ev.Terminal, c.ev.RunUUID, got, c.want)
		}
	}
}
