package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// maxHistory bounds the events read back from one subject: a group or run
// has a handful of statuses.
const maxHistory = 64

// publishEvent publishes ev on subject unless em shows its status (or a
// terminal one) published already, and records it in em. It reports
// whether this call added the event to the stream.
//
// Two guards make the event at most once however the tracker fails. The
// publish expects the subject's last sequence to be em.Seq, so it is a
// compare-and-set on the subject: a leader whose record is stale (it crashed
// after publishing and before writing the entry, or a second leader is
// still running) is refused, reads the subject's history back into em, and
// publishes only what the history lacks. And Nats-Msg-Id is
// client.StatusMsgID, so within the stream's duplicate window a re-publish
// is dropped by the server whatever the sequence.
func (t *Tracker) publishEvent(ctx context.Context, subject string, ev client.StatusEvent, em *Emitted) (bool, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return false, fmt.Errorf("encode event: %w", err)
	}
	for range 3 {
		if em.has(ev.Status) || em.Terminal {
			return false, nil
		}
		m := nats.NewMsg(subject)
		m.Data = body
		m.Header.Set(client.HeaderKey, ev.Key)
		m.Header.Set(client.HeaderMsgID, client.StatusMsgID(ev))
		ack, err := t.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(em.Seq))
		if err == nil {
			em.add(ev.Status, ack.Sequence, ev.Terminal)
			return !ack.Duplicate, nil
		}
		if !wrongLastSequence(err) {
			return false, fmt.Errorf("publish event: %w", err)
		}
		h, err := t.history(ctx, subject, ev.RunGroupID)
		if err != nil {
			return false, err
		}
		em.merge(h)
	}
	return false, errors.New("publish event: the subject kept changing")
}

func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// history reads what the status stream holds on subject for runGroup: its
// statuses and whether a terminal event is among them, and the subject's
// last sequence (0 if the subject is empty, e.g. aged out). After a retry a
// key's group subject also holds the earlier groups' events, which say
// nothing about this group's.
func (t *Tracker) history(ctx context.Context, subject, runGroup string) (Emitted, error) {
	var h Emitted
	next := uint64(1)
	for range maxHistory {
		m, err := t.status.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return h, nil
		}
		if err != nil {
			return h, fmt.Errorf("read events of a subject: %w", err)
		}
		var ev client.StatusEvent
		if err := json.Unmarshal(m.Data, &ev); err == nil && ev.Status != "" && ev.RunGroupID == runGroup {
			h.add(ev.Status, m.Sequence, ev.Terminal)
		}
		h.Seq, next = m.Sequence, m.Sequence+1
	}
	return h, fmt.Errorf("read events of a subject: more than %d", maxHistory)
}
