package pause

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/natstest"

	"github.com/nats-io/nats.go/jetstream"
)

func newKV(t *testing.T) jetstream.KeyValue {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "CONTROL"})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// A pause set by one replica stops every replica, and a successful probe
// resumes them all.
func TestPauseIsFleetWideAndResumesAfterProbe(t *testing.T) {
	kv := newKV(t)
	var healthy atomic.Bool
	probe := func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return errors.New("still refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := New(kv, Config{Worker: "a", Probe: probe, ProbeInterval: 20 * time.Millisecond})
	b := New(kv, Config{Worker: "b", Probe: probe, ProbeInterval: 20 * time.Millisecond})
	done := make(chan struct{}, 2)
	for _, c := range []*Controller{a, b} {
		go func(c *Controller) { _ = c.Run(ctx); done <- struct{}{} }(c)
	}
	if _, err := a.Pause(ctx, ReasonAuth, "AuthFailure.SecretIdNotFound"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.State().Paused })
	if st := b.State(); st.Reason != ReasonAuth || st.By != "a" {
		t.Fatalf("b sees %+v, want paused by a for auth", st)
	}
	wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if err := b.WaitResumed(wctx); err == nil {
		t.Fatal("WaitResumed returned while the fleet is paused")
	}
	wcancel()
	healthy.Store(true)
	wctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := b.WaitResumed(wctx); err != nil {
		t.Fatalf("b did not resume after a successful probe: %v", err)
	}
	waitFor(t, func() bool { return !a.State().Paused })
	cancel()
	<-done
	<-done
}

func TestUnreachableForLongPauses(t *testing.T) {
	kv := newKV(t)
	now := time.Unix(1000, 0)
	c := New(kv, Config{Worker: "a", UnreachableAfter: time.Minute, Now: func() time.Time { return now }})
	ctx := context.Background()
	c.ObserveTransportFailure(ctx)
	now = now.Add(30 * time.Second)
	c.ObserveTransportFailure(ctx)
	if c.State().Paused {
		t.Fatal("paused after 30s of failures, want 1m")
	}
	c.ObserveSuccess()
	now = now.Add(50 * time.Second)
	c.ObserveTransportFailure(ctx)
	if c.State().Paused {
		t.Fatal("a success in between must restart the clock")
	}
	now = now.Add(61 * time.Second)
	c.ObserveTransportFailure(ctx)
	if st := c.State(); !st.Paused || st.Reason != ReasonUnreachable {
		t.Fatalf("state = %+v, want paused as unreachable", st)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An environment outage is lifted only by a real call: when the probe
// passes, exactly one caller fleet-wide gets the trial; a failed trial
// keeps the fleet paused (and turns the trial off until the next probe),
// a successful one resumes everybody. Lookups are not held by it.
func TestEnvironmentPauseIsLiftedByOneTrialCall(t *testing.T) {
	kv := newKV(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	probe := func(context.Context) error { return nil } // authorised all along
	a := New(kv, Config{Worker: "a", Probe: probe, ProbeInterval: 50 * time.Millisecond})
	b := New(kv, Config{Worker: "b", Probe: probe, ProbeInterval: 50 * time.Millisecond})
	for _, c := range []*Controller{a, b} {
		go func(c *Controller) { _ = c.Run(ctx) }(c)
	}
	if _, err := a.Pause(ctx, ReasonEnvironment, "InvalidParameterValue.EnvironmentNotAvailable"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.State().Paused })
	if err := b.WaitLookup(ctx); err != nil {
		t.Fatalf("lookups held by an environment pause: %v", err)
	}
	// Another failure reported while the trial is offered (a lookup, a
	// call already in flight) must not hide the trial.
	waitFor(t, func() bool { return b.State().Trial })
	if first, err := b.Pause(ctx, ReasonEnvironment, "InvalidParameterValue.EnvironmentNotAvailable"); err != nil || first {
		t.Fatalf("a second Pause: first %v, %v; want false", first, err)
	}
	if !b.State().Trial {
		t.Fatal("a second Pause hid the offered trial")
	}

	// Six callers on two replicas race for the trial: one wins.
	type turn struct {
		owner string
		trial bool
	}
	turns := make(chan turn, 6)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	for i := range 6 {
		c := []*Controller{a, b}[i%2]
		owner := string(rune('p' + i))
		go func() {
			trial, err := c.WaitTurn(wctx, owner)
			if err == nil {
				turns <- turn{owner, trial}
			}
		}()
	}
	first := <-turns
	if !first.trial {
		t.Fatalf("the first caller through a paused fleet was not a trial: %+v", first)
	}
	select {
	case other := <-turns:
		t.Fatalf("a second caller got through during the trial: %+v", other)
	case <-time.After(200 * time.Millisecond):
	}
	// The trial failed: still paused; the next probe offers another trial.
	c := a
	if first.owner[0]%2 == 1 {
		c = b
	}
	if err := c.EndTrial(ctx, first.owner, TrialFailed); err != nil {
		t.Fatal(err)
	}
	second := <-turns
	if !second.trial || second.owner == first.owner {
		t.Fatalf("after a failed trial: %+v, want another caller's trial", second)
	}
	if !a.State().Paused || !b.State().Paused {
		t.Fatal("the fleet resumed after a failed trial")
	}
	c = a
	if second.owner[0]%2 == 1 {
		c = b
	}
	if err := c.EndTrial(ctx, second.owner, TrialSucceeded); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if rest := <-turns; rest.trial {
			t.Fatalf("a caller after the resume was given a trial: %+v", rest)
		}
	}
	waitFor(t, func() bool { return !a.State().Paused && !b.State().Paused })
}
