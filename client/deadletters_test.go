package client_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
)

// The summary's JSON is what enqueue dlq list --json prints (and the
// console serves): its fields and tags are the contract.
func TestDeadLetterSummary(t *testing.T) {
	failed := time.Date(2026, 11, 27, 9, 0, 0, 0, time.FixedZone("CET", 3600))
	stored := time.Date(2026, 11, 27, 8, 30, 0, 0, time.UTC)
	h := nats.Header{}
	h.Set(client.HeaderKey, "from-header")
	h.Set(client.HeaderReason, string(client.ReasonInvalidRequest))
	h.Set(client.HeaderErrorCode, "InvalidParameter")
	dead := func(request string) *client.DeadLetter {
		d := &client.DeadLetter{Key: "k-1", Reason: client.ReasonPermanentError, Attempts: 2, Deliveries: 3, FailedAt: failed,
			Error: client.Failure{Class: "permanent", Code: "InvalidParameterValue", Field: "Option.FailureMode"}}
		if request != "" {
			d.Request = json.RawMessage(request)
		} else {
			d.RawBase64 = "bm90IGpzb24="
		}
		return d
	}
	for _, tc := range []struct {
		name string
		d    client.StoredDeadLetter
		want string
	}{
		{"decoded", client.StoredDeadLetter{Sequence: 7, Stored: stored, Header: h, DeadLetter: dead(`{"Name":"x"}`), Key: "k-1"},
			`{"seq":7,"key":"k-1","reason":"permanent_error","code":"InvalidParameterValue","field":"Option.FailureMode",` +
				`"failed_at":"2026-11-27T08:00:00Z","attempts":2,"deliveries":3}`},
		{"raw request", client.StoredDeadLetter{Sequence: 8, Stored: stored, Header: h, DeadLetter: dead(""), Key: "k-1"},
			`{"seq":8,"key":"k-1","reason":"permanent_error","code":"InvalidParameterValue","field":"Option.FailureMode",` +
				`"failed_at":"2026-11-27T08:00:00Z","attempts":2,"deliveries":3,"raw":true}`},
		{"unreadable", client.StoredDeadLetter{Sequence: 9, Stored: stored, Header: h, Data: []byte("junk"), Key: "from-header"},
			`{"seq":9,"key":"from-header","reason":"invalid_request","code":"InvalidParameter",` +
				`"failed_at":"2026-11-27T08:30:00Z","attempts":0,"deliveries":0,"unreadable":true}`},
	} {
		got, err := json.Marshal(tc.d.Summary())
		if err != nil || string(got) != tc.want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", tc.name, got, err, tc.want)
		}
	}
}

func TestTopologyValidate(t *testing.T) {
	if err := client.DefaultTopology().Validate(); err != nil {
		t.Errorf("the default topology: %v", err)
	}
	topo := client.DefaultTopology()
	topo.RequestsSubject, topo.DLQPrefix = "", " "
	err := topo.Validate()
	if err == nil || err.Error() != "requests subject must not be empty\ndlq prefix must not be empty" {
		t.Errorf("empty and blank names: %v", err)
	}
	if err := (client.Topology{}).Validate(); err == nil || strings.Count(err.Error(), "must not be empty") != 8 {
		t.Errorf("the zero topology: %v", err)
	}
}

// A redrive goes back to the lane and fairness key the dead letter
// recorded; one from before lanes goes to the bare subject.
func TestRedriveKeepsTheLane(t *testing.T) {
	t.Parallel()
	js, topo := setup(t)
	ctx := context.Background()
	c := client.New(js, client.WithTopology(topo.Topology))
	for _, tc := range []struct {
		key, want string
		prio      client.Priority
		fairness  string
	}{
		{"urgent-one", topo.FlowSubject(client.PriorityUrgent, "icu"), client.PriorityUrgent, "icu"},
		{"legacy-one", topo.RequestsSubject, "", ""},
	} {
		d := client.DeadLetter{Key: tc.key, Request: body(tc.key), Reason: client.ReasonPermanentError, Priority: tc.prio, FairnessKey: tc.fairness,
			Error: client.Failure{Class: "permanent", Code: "InvalidParameterValue.X"}}
		if err := queue.PublishDeadLetter(ctx, js, topo, d, tc.key+"/1"); err != nil {
			t.Fatal(err)
		}
		stored, err := c.LatestDeadLetter(ctx, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Redrive(ctx, stored, body(tc.key)); err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(ctx, topo.RequestsStream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetLastMsgForSubject(ctx, tc.want)
		if err != nil || m.Header.Get(client.HeaderKey) != tc.key {
			t.Errorf("%s: not republished to %s: %v", tc.key, tc.want, err)
		}
	}
}
