// Package pause is the fleet-wide stop switch for systemic failures. When the
// API answers with an account or configuration error (expired credentials, a
// denied operation, an exhausted quota, an endpoint unreachable for long),
// every message would fail the same way; dead-lettering them would empty the
// backlog into the DLQ in seconds. Instead one worker sets a shared flag in a
// JetStream KV bucket, every replica stops submitting and keeps its messages,
// and the workers probe the API until it accepts calls again, then clear the
// flag: the fleet resumes by itself without a restart.
package pause

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Reason says why the fleet is paused; a bounded set (it labels metrics).
type Reason string

// Reasons a fleet pauses.
const (
	ReasonAuth        Reason = "auth"
	ReasonPermission  Reason = "permission"
	ReasonQuota       Reason = "quota"
	ReasonUnreachable Reason = "unreachable"
	ReasonConfig      Reason = "config"
	// ReasonEnvironment: the delivery environment (or the API behind it) is
	// unavailable; nothing about the account proves it back, so a resume
	// is tried with one real call (a trial) before the fleet goes on.
	ReasonEnvironment Reason = "environment"
)

// Reasons lists every Reason, in a stable order (the order docs list them).
var Reasons = []Reason{ReasonAuth, ReasonPermission, ReasonQuota, ReasonUnreachable, ReasonConfig, ReasonEnvironment}

// ReasonFor maps the code of a systemic error to the reason it pauses the
// fleet for. An unrecognised code counts as config: the pause then needs a
// trial call to be lifted, since no probe can prove it gone.
func ReasonFor(code string) Reason {
	switch {
	case strings.HasPrefix(code, "AuthFailure"), code == "ClientError.CredentialError":
		return ReasonAuth
	case strings.HasPrefix(code, "UnauthorizedOperation"), strings.HasPrefix(code, "OperationDenied"),
		code == "IpInBlacklist", code == "IpNotInWhitelist":
		return ReasonPermission
	case strings.HasPrefix(code, "LimitExceeded"):
		return ReasonQuota
	case code == "ClientError.NetworkError":
		return ReasonUnreachable
	case code == "InvalidParameterValue.EnvironmentNotAvailable", code == "ResourceNotFound.EnvironmentNotExist":
		return ReasonEnvironment
	default:
		return ReasonConfig
	}
}

// needsTrial reports whether a pause for reason can only be lifted by a real
// call succeeding: the probe proves authorisation, not that the environment
// (or whatever an unknown code meant) works again.
func needsTrial(reason Reason) bool { return reason == ReasonEnvironment || reason == ReasonConfig }

// StateKey is the control bucket's key of the pause flag (the console reads it).
const StateKey = "pause"

// State is the shared flag.
type State struct {
	Paused bool      `json:"paused"`
	Reason Reason    `json:"reason,omitempty"`
	Code   string    `json:"code,omitempty"`
	Since  time.Time `json:"since,omitempty"`
	By     string    `json:"by,omitempty"`
	// Trial is set while paused when the probe passed but only a real call
	// can prove the cause gone: one caller fleet-wide (TrialOwner, until
	// TrialUntil) may make that call; its outcome resumes the fleet or
	// keeps it paused.
	Trial      bool      `json:"trial,omitempty"`
	TrialOwner string    `json:"trial_owner,omitempty"`
	TrialUntil time.Time `json:"trial_until,omitempty"`
}

// Config configures a Controller.
type Config struct {
	// Worker identifies this replica in the flag and logs.
	Worker string
	// Probe asks the API whether it accepts calls again. It returns nil when
	// it does; any error keeps the fleet paused.
	Probe func(ctx context.Context) error
	// ProbeInterval is the time between probes while paused. Default 30s.
	ProbeInterval time.Duration
	// UnreachableAfter is how long the endpoint may fail at the transport
	// level, with no success in between, before the fleet pauses. Default 2m.
	UnreachableAfter time.Duration
	// TrialTimeout bounds a trial call: past it another caller may take the
	// trial. Default 2m.
	TrialTimeout time.Duration
	// OnChange is called (from the controller's goroutine) whenever the
	// observed state changes, e.g. to update metrics.
	OnChange func(State)
	Logger   *slog.Logger
	Now      func() time.Time
}

// Controller watches and sets the shared flag. Its methods are safe for
// concurrent use.
type Controller struct {
	kv  jetstream.KeyValue
	cfg Config

	mu      sync.Mutex
	state   State
	changed chan struct{} // closed and replaced on every change

	// unreachableSince is the unix-nano time of the first transport failure
	// since the last success; 0 when the endpoint is reachable.
	unreachableSince atomic.Int64
}

// New returns a controller over the control bucket. It does no I/O.
func New(kv jetstream.KeyValue, cfg Config) *Controller {
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 30 * time.Second
	}
	if cfg.UnreachableAfter <= 0 {
		cfg.UnreachableAfter = 2 * time.Minute
	}
	if cfg.TrialTimeout <= 0 {
		cfg.TrialTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Controller{kv: kv, cfg: cfg, changed: make(chan struct{})}
}

// State returns the last observed flag.
func (c *Controller) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// WaitResumed returns at once when the fleet is not paused, else when it
// resumes or ctx ends.
func (c *Controller) WaitResumed(ctx context.Context) error {
	for {
		c.mu.Lock()
		paused, ch := c.state.Paused, c.changed
		c.mu.Unlock()
		if !paused {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitLookup returns when lookups (DescribeRunGroups) may go out: at once
// unless the fleet is paused for a reason that would refuse them too
// (credentials, permissions, quota, an unreachable endpoint). An
// environment outage does not stop lookups, which may be what resolves a
// request.
func (c *Controller) WaitLookup(ctx context.Context) error {
	for {
		c.mu.Lock()
		st, ch := c.state, c.changed
		c.mu.Unlock()
		if !st.Paused || needsTrial(st.Reason) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitTurn is WaitResumed for a caller about to make the call that a trial
// needs: it also returns when the fleet is paused in a trial and this caller
// won it (trial true, with its owner name). The caller must report the
// call's outcome with EndTrial.
func (c *Controller) WaitTurn(ctx context.Context, owner string) (trial bool, err error) {
	for {
		c.mu.Lock()
		st, ch := c.state, c.changed
		c.mu.Unlock()
		if !st.Paused {
			return false, nil
		}
		if st.Trial && (st.TrialOwner == "" || c.cfg.Now().After(st.TrialUntil)) {
			won, err := c.claimTrial(ctx, owner)
			if err == nil && won {
				return true, nil
			}
		}
		wait := time.Until(st.TrialUntil)
		if !st.Trial || wait <= 0 {
			wait = c.cfg.ProbeInterval
		}
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		}
		t.Stop()
	}
}

// claimTrial takes the trial by compare-and-set, so one caller fleet-wide
// makes the trial call.
func (c *Controller) claimTrial(ctx context.Context, owner string) (bool, error) {
	cur, err := c.kv.Get(ctx, StateKey)
	if err != nil {
		return false, err
	}
	var st State
	if err := json.Unmarshal(cur.Value(), &st); err != nil {
		return false, err
	}
	now := c.cfg.Now()
	if !st.Paused || !st.Trial || (st.TrialOwner != "" && now.Before(st.TrialUntil)) {
		return false, nil
	}
	st.TrialOwner, st.TrialUntil = owner, now.Add(c.cfg.TrialTimeout).UTC()
	b, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	if _, err := c.kv.Update(ctx, StateKey, b, cur.Revision()); err != nil {
		return false, nil // somebody else won
	}
	c.observe(st)
	return true, nil
}

// Outcome of a trial call.
type Outcome int

// Trial outcomes.
const (
	// TrialSucceeded: the call worked; the fleet resumes.
	TrialSucceeded Outcome = iota + 1
	// TrialFailed: the cause persists (a systemic answer); the fleet stays
	// paused and the probe offers another trial later.
	TrialFailed
	// TrialInconclusive: the call proved nothing either way (an unknown
	// outcome, a rejection of that one request); another caller may try.
	TrialInconclusive
)

// EndTrial reports the outcome of owner's trial call.
func (c *Controller) EndTrial(ctx context.Context, owner string, o Outcome) error {
	if o == TrialSucceeded {
		return c.Resume(ctx)
	}
	return c.updateState(ctx, "end trial", func(st *State) bool {
		if !st.Paused || st.TrialOwner != owner {
			return false
		}
		st.TrialOwner, st.TrialUntil = "", time.Time{}
		if o == TrialFailed {
			st.Trial = false
		}
		return true
	})
}

// offerTrial turns a paused fleet whose probe passed into a trial.
func (c *Controller) offerTrial(ctx context.Context) error {
	return c.updateState(ctx, "offer trial", func(st *State) bool {
		if !st.Paused || st.Trial {
			return false
		}
		st.Trial = true
		return true
	})
}

// updateState applies change to the stored flag by compare-and-set (a lost
// race is left to the winner) and observes the result; change reports
// whether it changed anything.
func (c *Controller) updateState(ctx context.Context, what string, change func(*State) bool) error {
	cur, err := c.kv.Get(ctx, StateKey)
	if err != nil {
		return fmt.Errorf("pause: read flag: %w", err)
	}
	var st State
	if err := json.Unmarshal(cur.Value(), &st); err != nil {
		return fmt.Errorf("pause: decode flag: %w", err)
	}
	if !change(&st) {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if _, err := c.kv.Update(ctx, StateKey, b, cur.Revision()); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return nil
		}
		return fmt.Errorf("pause: %s: %w", what, err)
	}
	c.observe(st)
	return nil
}

// Pause sets the fleet-wide flag (idempotent: an already paused fleet keeps
// its first reason, and its trial) and applies it locally at once, without
// waiting for the watch to echo it. first reports that this call paused a
// fleet that was not paused.
func (c *Controller) Pause(ctx context.Context, reason Reason, code string) (first bool, err error) {
	st := State{Paused: true, Reason: reason, Code: code, Since: c.cfg.Now().UTC(), By: c.cfg.Worker}
	if c.State().Paused {
		return false, nil // the watch keeps the local copy in step with the flag
	}
	c.observe(st)
	b, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	_, err = c.kv.Create(ctx, StateKey, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		cur, gerr := c.kv.Get(ctx, StateKey)
		if gerr != nil {
			return false, fmt.Errorf("pause: read flag: %w", gerr)
		}
		var prev State
		if json.Unmarshal(cur.Value(), &prev) == nil && prev.Paused {
			c.observe(prev) // somebody paused first: theirs is the flag (and its trial)
			return false, nil
		}
		_, err = c.kv.Update(ctx, StateKey, b, cur.Revision())
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return false, c.resync(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("pause: set flag: %w", err)
	}
	return true, nil
}

// resync replaces the local copy with the stored flag (absent: not paused),
// so a local pause whose write failed, or a lost compare-and-set, cannot
// leave this replica paused (or unpaused) alone.
func (c *Controller) resync(ctx context.Context) error {
	cur, err := c.kv.Get(ctx, StateKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		c.observe(State{})
		return nil
	}
	if err != nil {
		return fmt.Errorf("pause: read flag: %w", err)
	}
	var st State
	if err := json.Unmarshal(cur.Value(), &st); err != nil {
		return fmt.Errorf("pause: decode flag: %w", err)
	}
	c.observe(st)
	return nil
}

// Resume clears the flag.
func (c *Controller) Resume(ctx context.Context) error {
	st := State{Paused: false, Since: c.cfg.Now().UTC(), By: c.cfg.Worker}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if _, err := c.kv.Put(ctx, StateKey, b); err != nil {
		return fmt.Errorf("pause: clear flag: %w", err)
	}
	c.observe(st)
	return nil
}

// ObserveTransportFailure records that a call could not reach the endpoint.
// When failures last longer than UnreachableAfter with no success between,
// the fleet pauses with reason "unreachable".
func (c *Controller) ObserveTransportFailure(ctx context.Context) {
	now := c.cfg.Now().UnixNano()
	c.unreachableSince.CompareAndSwap(0, now)
	since := c.unreachableSince.Load()
	if since != 0 && time.Duration(now-since) >= c.cfg.UnreachableAfter && !c.State().Paused {
		if _, err := c.Pause(ctx, ReasonUnreachable, "ClientError.NetworkError"); err != nil {
			c.cfg.Logger.Warn("could not pause the fleet", "error", err)
		}
	}
}

// ObserveSuccess records that a call reached the endpoint.
func (c *Controller) ObserveSuccess() { c.unreachableSince.Store(0) }

func (c *Controller) observe(st State) {
	c.mu.Lock()
	prev := c.state
	if prev == st {
		c.mu.Unlock()
		return
	}
	c.state = st
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if prev.Paused == st.Paused && prev.Reason == st.Reason {
		return // a trial changed hands: nothing to report
	}
	if st.Paused {
		c.cfg.Logger.Error("submissions paused fleet-wide", "reason", st.Reason, "code", st.Code, "by", st.By)
	} else {
		c.cfg.Logger.Info("submissions resumed fleet-wide", "by", st.By)
	}
	if c.cfg.OnChange != nil {
		c.cfg.OnChange(st)
	}
}

// Run watches the flag and, while paused, probes the API every
// ProbeInterval, clearing the flag when a probe succeeds. It returns when ctx
// ends.
func (c *Controller) Run(ctx context.Context) error {
	w, err := c.kv.Watch(ctx, StateKey)
	if err != nil {
		return fmt.Errorf("pause: watch flag: %w", err)
	}
	defer func() { _ = w.Stop() }()
	probe := time.NewTicker(c.cfg.ProbeInterval)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("pause: watch closed")
			}
			if e == nil { // end of the initial values
				continue
			}
			var st State
			if e.Operation() == jetstream.KeyValuePut {
				if err := json.Unmarshal(e.Value(), &st); err != nil {
					c.cfg.Logger.Warn("ignoring an undecodable pause flag", "error", err)
					continue
				}
			}
			c.observe(st)
		case <-probe.C:
			if !c.State().Paused || c.cfg.Probe == nil {
				continue
			}
			if err := c.resync(ctx); err != nil || !c.State().Paused {
				continue
			}
			if err := c.cfg.Probe(ctx); err != nil {
				c.cfg.Logger.Warn("probe: the API still refuses calls", "error", err)
				continue
			}
			c.ObserveSuccess()
			if needsTrial(c.State().Reason) {
				if err := c.offerTrial(ctx); err != nil {
					c.cfg.Logger.Warn("could not offer a trial call", "error", err)
				}
				continue
			}
			if err := c.Resume(ctx); err != nil {
				c.cfg.Logger.Warn("could not resume the fleet", "error", err)
			}
		}
	}
}
