package faultsuite

import (
	"context"
	"encoding/base64"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/sandbox"
)

// dlqEntry is one stored dead letter.
type dlqEntry struct {
	seq uint64
	dl  client.DeadLetter
}

func (e *env) deadLetters() []dlqEntry {
	e.t.Helper()
	var out []dlqEntry
	e.readStream(e.topo.DLQStream, func() { out = nil }, func(seq uint64, b []byte) {
		d, err := client.DecodeDeadLetter(b)
		if err != nil {
			e.t.Fatalf("bad dead letter at %d: %v", seq, err)
		}
		out = append(out, dlqEntry{seq, d})
	})
	return out
}

// redriveAll does what `enqueue dlq redrive --all` does, without its
// re-validation (so still-invalid requests go back too): every dead letter
// is redriven with the public client's Redrive, which republishes it (same
// key, fresh message ID) with fix applied to its body and then deletes it
// from the DLQ. It returns the redriven entries.
func (e *env) redriveAll(fix func(key string, body []byte) []byte) []dlqEntry {
	e.t.Helper()
	entries := e.deadLetters()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(e.js, client.WithTopology(e.topo.Topology))
	for _, x := range entries {
		body := []byte(x.dl.Request)
		if len(body) == 0 { // not JSON: kept as raw_base64
			var err error
			if body, err = base64.StdEncoding.DecodeString(x.dl.RawBase64); err != nil || len(body) == 0 {
				e.t.Fatalf("dead letter %d of %s kept no request (%v)", x.seq, x.dl.Key, err)
			}
		}
		d := client.StoredDeadLetter{Sequence: x.seq, Subject: e.topo.DLQSubject(x.dl.Key), DeadLetter: &x.dl, Key: x.dl.Key}
		if _, err := c.Redrive(ctx, d, fix(x.dl.Key, body)); err != nil {
			e.t.Fatalf("redrive dead letter %d of %s: %v", x.seq, x.dl.Key, err)
		}
	}
	return entries
}

// republish publishes body under key with a message ID never used before,
// so JetStream's de-duplication cannot drop it: only the ledger stands
// between it and a second submission.
func (e *env) republish(key, msgID string, body []byte) {
	e.t.Helper()
	m := nats.NewMsg(e.topo.RequestsSubject)
	m.Data = body
	m.Header.Set(client.HeaderKey, key)
	m.Header.Set(client.HeaderMsgID, msgID)
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
}

// redriveMessage publishes the message the public client's Redrive would
// publish for the dead letter at dlqSeq (key kept, Nats-Msg-Id
// <key>/redrive/<dlqSeq>, Omicsq-Redrive-Of: dlqSeq), but deletes nothing:
// for a scenario whose dead state is laid out in the ledger, with no dead
// letter stored at dlqSeq, where Redrive's delete would fail (or remove a
// dead letter the scenario did not mean).
func (e *env) redriveMessage(key string, dlqSeq uint64, body []byte) {
	e.t.Helper()
	m := nats.NewMsg(e.topo.RequestsSubject)
	m.Data = body
	m.Header.Set(client.HeaderKey, key)
	m.Header.Set(client.HeaderMsgID, fmt.Sprintf("%s/redrive/%d", key, dlqSeq))
	m.Header.Set(client.HeaderRedriveOf, fmt.Sprint(dlqSeq))
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatalf("redrive %s: %v", key, err)
	}
}

// 6. Redriving the whole DLQ twice in a row submits nothing twice. Dead
// letters of four kinds are produced (invalid; permanent
// ResourceNotFound.ApplicationNotExist; retries_exhausted under a forced
// throttle; retries_exhausted after ambiguous InternalErrors, whose ledger
// says a run group may exist), the causes are fixed (the forced error and
// the faults lifted; half the unknown-application requests edited to a known
// application, as `redrive --set ApplicationId=...` would), and every dead
// letter is redriven — each fixed one twice at once, the second copy under a
// fresh message ID, as two operators racing would. Then the whole DLQ is
// redriven a second time, together with a replay of every fixed request.
func TestRedriveDLQTwice(t *testing.T) {
	e := newEnv(t, envOptions{Sandbox: sandbox.Options{KnownApplications: []string{appID}}})
	bodies := map[string][]byte{}
	names := map[string]string{}
	group := func(prefix string, n int, app string) []string {
		var keys []string
		for i := 0; i < n; i++ {
			k, name := fmt.Sprintf("%s-%02d", prefix, i), fmt.Sprintf("%s-sample-%02d", prefix, i)
			keys, names[k], bodies[k] = append(keys, k), name, requestBody(name, app)
		}
		return keys
	}
	control := group("control", 10, appID)
	missing := group("missing", 10, otherID)
	var invalid []string
	for i, b := range invalidBodies {
		k := fmt.Sprintf("invalid-%02d", i)
		invalid, bodies[k] = append(invalid, k), []byte(b)
	}
	e.publishBodies(slices.Concat(control, missing, invalid), bodies)
	// A short horizon: the sandbox here shows new groups at once. The
	// breaker is off: the unknown-application requests must dead-letter.
	args := []string{"--max-attempts", "3", "--retry-initial", "20ms", "--retry-max-interval", "50ms", "--lookup-horizon", "3s",
		"--breaker-threshold", "0"}
	e.startWorker("w1", args...)
	e.startWorker("w2", args...)
	e.waitSettled(len(control)+len(missing)+len(invalid), 60*time.Second)

	// Retries exhausted on unknown outcomes that created nothing (InternalError
	// on every call; throttling is retried without a budget, so it never
	// exhausts).
	if err := e.sb.SetFaults(sandbox.Faults{InternalErrorP: 1, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	internal := group("internal", 10, appID)
	e.publishBodies(internal, bodies)
	e.waitSettled(len(control)+len(missing)+len(invalid)+len(internal), 60*time.Second)

	if err := e.sb.SetFaults(sandbox.Faults{InternalErrorP: 1, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	ambiguous := group("ambiguous", 6, appID)
	e.publishBodies(ambiguous, bodies)
	e.waitSettled(len(control)+len(missing)+len(invalid)+len(internal)+len(ambiguous), 60*time.Second)
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}

	// The DLQ now holds one dead letter per failed request, of each kind.
	want := map[string]string{}
	for _, k := range invalid {
		want[k] = "invalid_request"
	}
	for _, k := range missing {
		want[k] = "permanent_error"
	}
	for _, k := range slices.Concat(internal, ambiguous) {
		want[k] = "retries_exhausted"
	}
	before := e.deadLetters()
	got := map[string]string{}
	for _, x := range before {
		got[x.dl.Key] = string(x.dl.Reason)
	}
	if !maps.Equal(got, want) || len(before) != len(want) {
		t.Fatalf("DLQ before the redrive: %d entries %v, want %v", len(before), got, want)
	}
	groupsBefore := len(e.sb.RunGroups())

	// Fix: lifted faults; half the unknown applications corrected.
	fixed := slices.Concat(internal, ambiguous, missing[:5])
	stillFailing := map[string]string{}
	for _, k := range missing[5:] {
		stillFailing[k] = "permanent_error"
	}
	for _, k := range invalid {
		stillFailing[k] = "invalid_request"
	}
	fix := func(key string, body []byte) []byte {
		if slices.Contains(missing[:5], key) {
			return requestBody(names[key], appID)
		}
		return body
	}

	// Round 1: redrive all; every fixed request a second time at once. A
	// 300 ms latency on every call keeps the first copy's call open while
	// the second copy is delivered (to the same worker or the other one).
	if err := e.sb.SetFaults(sandbox.Faults{Latency: 300 * time.Millisecond, LatencyP: 1, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	r1 := e.redriveAll(fix)
	racing := 0
	for _, x := range r1 {
		if slices.Contains(fixed, x.dl.Key) {
			e.republish(x.dl.Key, fmt.Sprintf("%s/race/%d", x.dl.Key, x.seq), fix(x.dl.Key, x.dl.Request))
			racing++
		}
	}
	ended := len(control) + len(fixed) + len(stillFailing)
	e.waitSettled(ended, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}
	s1, err := e.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	runsAfter1 := e.sb.Stats().Actions["RunApplication"].Arrivals
	groupsAfter1 := len(e.sb.RunGroups())
	e.checkRedrive(t, "round 1", slices.Concat(control, fixed), names, stillFailing)

	// Round 2: the whole DLQ again, plus a replay of every fixed request.
	r2 := e.redriveAll(func(_ string, b []byte) []byte { return b })
	for _, k := range fixed {
		e.republish(k, k+"/replay", fix(k, bodies[k]))
	}
	e.waitSettled(ended, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	e.stopWorkers()
	runsAfter2 := e.sb.Stats().Actions["RunApplication"].Arrivals
	groupsAfter2 := len(e.sb.RunGroups())
	e.checkRedrive(t, "round 2", slices.Concat(control, fixed), names, stillFailing)
	if groupsAfter2 != groupsAfter1 {
		t.Errorf("the second redrive created %d run groups, want 0", groupsAfter2-groupsAfter1)
	}
	// Only the five still-unknown applications reach the API again (and
	// are refused); fixed requests are answered from the ledger.
	if d := runsAfter2 - runsAfter1; d != 5 {
		t.Errorf("the second redrive made %d RunApplication calls, want 5 (the still-unknown applications)", d)
	}
	final, err := e.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURES %s: requests=%d dlq_before=%d (invalid=%d permanent=%d internal=%d ambiguous=%d) fixed=%d redrive1=%d racing_copies=%d handbacks_round1=%d redrive2=%d replays=%d "+
		"run_groups_before=%d after_round1=%d after_round2=%d duplicates=0 RunApplication_round2=%d dlq_after=%d redeliveries=%d pending=%d duration=%s",
		t.Name(), len(names)+len(invalid), len(before), len(invalid), len(missing), len(internal), len(ambiguous), len(fixed), len(r1), racing, int(s1.delivered)-int(s1.requestsLastSeq), len(r2), len(fixed),
		groupsBefore, groupsAfter1, groupsAfter2, runsAfter2-runsAfter1, final.dlq, int(final.delivered)-int(final.requestsLastSeq),
		final.requests+final.numPending+final.ackPending, time.Since(e.start).Round(100*time.Millisecond))
}

// checkRedrive asserts after a redrive round: each succeeded key has
// exactly one result naming the one run group with its Name; no Name was
// created twice; each still-failing key has exactly one dead letter with
// the expected reason; nothing else is in the DLQ; nothing is pending.
func (e *env) checkRedrive(t *testing.T, round string, succeeded []string, names map[string]string, stillFailing map[string]string) {
	t.Helper()
	results, dead := e.outcomes()
	byName := map[string][]string{}
	for _, g := range e.sb.RunGroups() {
		byName[g.Name] = append(byName[g.Name], g.RunGroupId)
	}
	for name, ids := range byName {
		if len(ids) != 1 {
			t.Errorf("%s: Name %s created %d times", round, name, len(ids))
		}
	}
	if len(byName) != len(succeeded) {
		t.Errorf("%s: %d run groups for %d succeeded requests", round, len(byName), len(succeeded))
	}
	for _, k := range succeeded {
		rs := results[k]
		if len(rs) != 1 {
			t.Errorf("%s: %s has %d results, want 1", round, k, len(rs))
			continue
		}
		if ids := byName[names[k]]; len(ids) != 1 || ids[0] != rs[0].RunGroupID {
			t.Errorf("%s: %s result names %s, the sandbox has %v", round, k, rs[0].RunGroupID, ids)
		}
		if len(dead[k]) != 0 {
			t.Errorf("%s: %s succeeded but still has %d dead letters", round, k, len(dead[k]))
		}
	}
	for k, reason := range stillFailing {
		if ds := dead[k]; len(ds) != 1 || string(ds[0].Reason) != reason {
			t.Errorf("%s: %s has %d dead letters, want one %s", round, k, len(ds), reason)
		}
	}
	n := 0
	for _, ds := range dead {
		n += len(ds)
	}
	if n != len(stillFailing) {
		t.Errorf("%s: the DLQ holds %d dead letters, want %d", round, n, len(stillFailing))
	}
	if s, err := e.snapshot(); err != nil || s.requests+s.numPending+s.ackPending != 0 {
		t.Errorf("%s: left pending: %+v (%v)", round, s, err)
	}
}
