package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// PublishResult publishes r to its per-request subject. The results stream
// keeps one message per subject and refuses the rest, so a second publish for
// the same key (a retry, a redelivery, a crash between publish and ack)
// reports duplicate=true instead of adding a second result.
func PublishResult(ctx context.Context, js jetstream.JetStream, t Topology, r client.Result) (duplicate bool, err error) {
	body, err := json.Marshal(r)
	if err != nil {
		return false, fmt.Errorf("encode result: %w", err)
	}
	m := nats.NewMsg(t.ResultSubject(r.Key))
	m.Data = body
	m.Header.Set(client.HeaderKey, r.Key)
	m.Header.Set(client.HeaderMsgID, "result/"+r.Key)
	if r.Batch != "" {
		m.Header.Set(client.HeaderBatch, r.Batch)
	}
	// Expecting no earlier message on the subject makes a second result fail
	// with an error code of its own (wrong last sequence), so a duplicate is
	// recognised by code, not by the server's wording.
	ack, err := js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			// The subject already holds this request's result.
			return true, nil
		}
		return false, fmt.Errorf("publish result: %w", err)
	}
	return ack.Duplicate, nil
}

// PublishDeadLetter publishes d. msgID makes a retried publish of the same
// dead letter a no-op; it should name the failure (key plus the delivery or
// ledger generation) so that a redriven request that fails again lands again.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, t Topology, d client.DeadLetter, msgID string) error {
	body, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode dead letter: %w", err)
	}
	m := nats.NewMsg(t.DLQSubject(d.Key))
	m.Data = body
	m.Header.Set(client.HeaderKey, d.Key)
	m.Header.Set(client.HeaderReason, string(d.Reason))
	if d.Error.Code != "" {
		m.Header.Set(client.HeaderErrorCode, d.Error.Code)
	}
	m.Header.Set(client.HeaderMsgID, "dlq/"+msgID)
	if d.Batch != "" {
		m.Header.Set(client.HeaderBatch, d.Batch)
	}
	if d.Priority != "" {
		m.Header.Set(client.HeaderPriority, string(d.Priority))
	}
	if d.FairnessKey != "" {
		m.Header.Set(client.HeaderFairnessKey, d.FairnessKey)
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	return nil
}
