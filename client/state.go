package client

import (
	"context"
	"errors"
)

// Phase is where a request stands, from everything the streams say about
// it.
type Phase string

// Phases of a request.
const (
	// PhasePending: no outcome yet (queued, being submitted, or unknown).
	PhasePending Phase = "pending"
	// PhaseDeadLettered: it was not submitted; its dead letter says why.
	PhaseDeadLettered Phase = "dead_lettered"
	// PhaseSubmitted: its run group exists; the tracker has reported no
	// status yet.
	PhaseSubmitted Phase = "submitted"
	// PhaseRunning: the run group has a status that is not terminal.
	PhaseRunning Phase = "running"
	// PhaseSucceeded and PhaseFailed: the run group's terminal status.
	PhaseSucceeded Phase = "succeeded"
	PhaseFailed    Phase = "failed"
)

// Phases lists every phase, in lifecycle order.
var Phases = []Phase{PhasePending, PhaseDeadLettered, PhaseSubmitted, PhaseRunning, PhaseSucceeded, PhaseFailed}

// RequestState is what the results, dead-letter and status streams hold
// for one key.
type RequestState struct {
	Key        string
	Result     *Result
	DeadLetter *StoredDeadLetter
	// Status is the run group's newest status event.
	Status *StatusEvent
}

// Phase summarises the state. A result outranks a dead letter (a redriven
// request that then succeeded may leave an older dead letter behind).
func (s RequestState) Phase() Phase {
	switch {
	case s.Status != nil && s.Status.Terminal && IsFailedStatus(s.Status.Status):
		return PhaseFailed
	case s.Status != nil && s.Status.Terminal:
		return PhaseSucceeded
	case s.Status != nil:
		return PhaseRunning
	case s.Result != nil:
		return PhaseSubmitted
	case s.DeadLetter != nil:
		return PhaseDeadLettered
	}
	return PhasePending
}

// Terminal reports whether nothing more will happen to the request without
// an operator: its run group ended, or it was dead-lettered.
func (s RequestState) Terminal() bool {
	p := s.Phase()
	return p == PhaseSucceeded || p == PhaseFailed || p == PhaseDeadLettered
}

// State reads key's result, newest dead letter and newest status event.
func (c *Client) State(ctx context.Context, key string) (RequestState, error) {
	st := RequestState{Key: key}
	o, ok, err := c.Result(ctx, key)
	if err != nil {
		return st, err
	}
	if ok && o.Result != nil {
		st.Result = o.Result
	}
	d, err := c.LatestDeadLetter(ctx, key)
	switch {
	case err == nil:
		st.DeadLetter = &d
	case !errors.Is(err, ErrNotFound):
		return st, err
	}
	e, ok, err := c.LatestStatus(ctx, key)
	if err != nil {
		return st, err
	}
	if ok {
		st.Status = &e
	}
	return st, nil
}
