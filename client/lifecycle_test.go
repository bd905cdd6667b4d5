package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// statusStream makes sure the status stream exists (Provision creates it
// once the tracker's resources are provisioned).
func statusStream(t *testing.T, js jetstream.JetStream, topo client.Topology) {
	t.Helper()
	ctx := context.Background()
	if _, err := js.Stream(ctx, topo.StatusStream); errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: topo.StatusStream, Subjects: []string{topo.StatusPrefix + ".>"}})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func publishStatus(t *testing.T, js jetstream.JetStream, topo client.Topology, e client.StatusEvent) {
	t.Helper()
	b, _ := json.Marshal(e)
	m := nats.NewMsg(topo.StatusGroupSubject(e.Key))
	if e.RunUUID != "" {
		m.Subject = topo.StatusRunSubject(e.Key, e.RunUUID)
	}
	m.Data = b
	m.Header.Set(client.HeaderMsgID, client.StatusMsgID(e))
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func TestWatchStatusFollowsEachKeyToItsTerminalEvent(t *testing.T) {
	t.Parallel()
	js, qt := setup(t)
	topo := qt.Topology
	statusStream(t, js, topo)
	ctx := context.Background()
	c := client.New(js)
	ev := func(key, status string) client.StatusEvent {
		return client.StatusEvent{Key: key, RunGroupID: "rg-" + key, Status: status, Terminal: client.IsTerminalStatus(status), ObservedAt: time.Now().UTC()}
	}
	publishStatus(t, js, topo, ev("done", "Running"))
	publishStatus(t, js, topo, ev("done", "Succeeded"))
	publishStatus(t, js, topo, ev("done", "Succeeded")) // the same event again: de-duplicated
	publishStatus(t, js, topo, ev("live", "Pending"))
	publishStatus(t, js, topo, client.StatusEvent{Key: "live", RunGroupID: "rg-live", RunUUID: "run-1", Status: "Running"})
	if e, ok, err := c.LatestStatus(ctx, "live"); err != nil || !ok || e.Status != "Pending" {
		t.Fatalf("latest of live: %+v %v %v (a run's event is not the group's)", e, ok, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	w, err := c.WatchStatus(wctx, []string{"done", "live"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	publishStatus(t, js, topo, ev("live", "Running"))
	publishStatus(t, js, topo, ev("live", "failed")) // case-insensitive terminal
	publishStatus(t, js, topo, ev("live", "Lost"))   // after the terminal one: not delivered
	var got []string
	for e := range w.Events() {
		got = append(got, e.Key+":"+e.Status)
	}
	per := map[string][]string{}
	for _, g := range got {
		k, st, _ := strings.Cut(g, ":")
		per[k] = append(per[k], st)
	}
	// live's first event is its newest stored one when read: Pending, or
	// Running if that was published first; then the changes, in order.
	live := strings.Join(per["live"], ",")
	if strings.Join(per["done"], ",") != "Succeeded" || (live != "Pending,Running,failed" && live != "Running,failed") {
		t.Fatalf("events %v", got)
	}
	if wctx.Err() != nil {
		t.Error("the watch ended by timeout, not because every key was terminal")
	}
}

func TestTerminalStatuses(t *testing.T) {
	for s, want := range map[string][2]bool{"Succeeded": {true, false}, "FAILED": {true, true}, "terminated": {true, true},
		"Running": {false, false}, "Unheard-Of": {false, false}} {
		if client.IsTerminalStatus(s) != want[0] || client.IsFailedStatus(s) != want[1] {
			t.Errorf("%s: terminal %v failed %v, want %v", s, client.IsTerminalStatus(s), client.IsFailedStatus(s), want)
		}
	}
}

// Many keys with stored events: the watch must not wait for its reader
// before returning (the events outnumber its buffers).
func TestWatchStatusManyStoredKeys(t *testing.T) {
	t.Parallel()
	js, qt := setup(t)
	topo := qt.Topology
	statusStream(t, js, topo)
	var keys []string
	for i := range 500 {
		k := fmt.Sprintf("k%03d", i)
		keys = append(keys, k)
		publishStatus(t, js, topo, client.StatusEvent{Key: k, RunGroupID: "rg-" + k, Status: "Succeeded", Terminal: true})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := client.New(js).WatchStatus(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	n := 0
	for range w.Events() {
		n++
	}
	if n != 500 || ctx.Err() != nil {
		t.Fatalf("%d of 500 terminal events, ctx %v", n, ctx.Err())
	}
}
