package tracker

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

// A retried key's entry (Retried), written by someone else over the
// terminal one, is followed: the new group's events go on the same subject.
// Here a crashed leader had already published the new group's Pending
// event without recording it, so the first publish is refused and the
// subject's history is read back; the old group's terminal event in it
// must not count for the new group.
func TestRetriedEntryIsFollowedAfterTheOldGroupsEvents(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sandbox.Execution{})
	key := e.submit(ctx, 1, 0, "")
	g1 := e.groupOf[key]
	e.publishResults(ctx)
	r := e.startTracker(trackerOpts{})
	e.sb.SetRunGroupStatus(g1, "Failed")
	e.waitTerminal(ctx, 10*time.Second)
	// The entry is written after the terminal event is published: the
	// retry (like internal/rerun) starts from the recorded end, else its
	// write races the leader's.
	var kve jetstream.KeyValueEntry
	var old Entry
	waitFor(t, "the terminal entry", 10*time.Second, func() bool {
		var err error
		if kve, err = r.runs.Get(ctx, client.KeyToken(key)); err != nil {
			return false
		}
		return json.Unmarshal(kve.Value(), &old) == nil && old.Terminal
	})
	resp, err := e.api.RetryRuns(ctx, &submit.RetryRunsRequest{RunGroupId: g1})
	if err != nil {
		t.Fatal(err)
	}
	g2 := resp.RunGroupId
	m := nats.NewMsg(e.topo.StatusGroupSubject(key))
	m.Data, _ = json.Marshal(client.StatusEvent{Key: key, RunGroupID: g2, Status: "Pending", RetryOf: g1, ObservedAt: time.Now()})
	m.Header.Set(client.HeaderMsgID, "from-a-crashed-leader")
	if _, err := e.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(Retried(old, g2, time.Now()))
	if _, err := r.runs.Update(ctx, client.KeyToken(key), b, kve.Revision()); err != nil {
		t.Fatal(err)
	}
	e.sb.SetRunGroupStatus(g2, "Running")
	waitFor(t, "the new group's Running event", 10*time.Second, func() bool {
		evs := e.events(ctx)
		last := evs[len(evs)-1].ev
		return last.RunGroupID == g2 && last.Status == "Running"
	})
	e.sb.SetRunGroupStatus(g2, "Succeeded")
	waitFor(t, "the new group's terminal event", 10*time.Second, func() bool {
		evs := e.events(ctx)
		return evs[len(evs)-1].ev.RunGroupID == g2 && evs[len(evs)-1].ev.Terminal
	})
	var got []string
	for _, s := range e.events(ctx) {
		got = append(got, s.ev.RunGroupID+"/"+s.ev.Status)
		if s.ev.RunGroupID == g2 && s.ev.RetryOf != g1 {
			t.Errorf("event %d of %s: retry_of %q", s.seq, g2, s.ev.RetryOf)
		}
	}
	want := []string{g1 + "/Failed", g2 + "/Pending", g2 + "/Running", g2 + "/Succeeded"}
	if len(got) < len(want) || !slices.Equal(got[len(got)-len(want):], want) {
		t.Fatalf("events %v, want them to end %v", got, want)
	}
}
