package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// CommitFailMode is how a commit-then-fail call fails after its run group
// was created.
type CommitFailMode string

const (
	// CommitFailBadGateway answers HTTP 502 with a non-JSON (HTML) body, as
	// a gateway in front of the API would. The SDK reports
	// ClientError.ParseJsonError.
	CommitFailBadGateway CommitFailMode = "bad_gateway"
	// CommitFailDrop closes the connection without any response. The SDK
	// reports ClientError.NetworkError (EOF).
	CommitFailDrop CommitFailMode = "drop"
	// CommitFailHang never answers: the call is held until the client gives
	// up (or Options.HangTimeout passes, or the server is closed), then the
	// connection is closed. The SDK reports ClientError.NetworkError with a
	// deadline error.
	CommitFailHang CommitFailMode = "hang"
)

// AllCommitFailModes lists every CommitFailMode, in round-robin order.
var AllCommitFailModes = []CommitFailMode{CommitFailBadGateway, CommitFailDrop, CommitFailHang}

// Faults configures fault injection. Every probability is in [0, 1] and is
// decided independently per admitted call (one that passed authentication
// and the rate limiter) from the server's seeded random source, so a
// sequential client sees the same faults for the same seed.
type Faults struct {
	// InternalErrorP is the probability of answering InternalError without
	// doing anything.
	InternalErrorP float64 `json:"internal_error_p"`
	// ThrottleP is the probability of a spurious RequestLimitExceeded
	// (counted as outcome "throttled_fault"); nothing is done. Decided only
	// when InternalError was not.
	ThrottleP float64 `json:"throttle_p"`
	// CommitThenFailP is the probability that a call of an action that
	// changes state (RunApplication, RetryRuns, TerminateRunGroup) makes
	// its change, creating a run group or stopping runs, and then fails as
	// one of CommitThenFailModes. Calls answered with an error, and the
	// other actions, ignore it.
	CommitThenFailP float64 `json:"commit_then_fail_p"`
	// CommitThenFailModes are the failure modes used; empty means all of
	// AllCommitFailModes.
	CommitThenFailModes []CommitFailMode `json:"commit_then_fail_modes,omitempty"`
	// CommitThenFailRandom picks the mode at random; false cycles through
	// CommitThenFailModes in order.
	CommitThenFailRandom bool `json:"commit_then_fail_random"`
	// Latency is added before processing with probability LatencyP. The
	// call is processed after the delay even if the client has given up,
	// as a real backend would: a Latency longer than the client's timeout
	// creates run groups the client never hears about.
	Latency time.Duration `json:"-"`
	// LatencyP is the probability of adding Latency.
	LatencyP float64 `json:"latency_p"`
	// Actions limits the faults to these actions; empty means every action.
	Actions []string `json:"actions,omitempty"`
}

// MarshalJSON encodes f with Latency as a Go duration string such as
// "250ms": nanosecond integers are easy to get wrong by hand.
func (f Faults) MarshalJSON() ([]byte, error) {
	type plain Faults // no MarshalJSON: avoids recursion
	return json.Marshal(struct {
		plain
		Latency string `json:"latency"`
	}{plain(f), f.Latency.String()})
}

// UnmarshalJSON decodes the form MarshalJSON produces; unknown keys are
// rejected so a misspelt knob does not silently do nothing.
func (f *Faults) UnmarshalJSON(b []byte) error {
	type plain Faults
	var w struct {
		plain
		Latency string `json:"latency"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("sandbox: faults: %w", err)
	}
	*f = Faults(w.plain)
	f.Latency = 0
	if w.Latency != "" {
		d, err := time.ParseDuration(w.Latency)
		if err != nil {
			return fmt.Errorf("sandbox: faults: latency: %w", err)
		}
		f.Latency = d
	}
	return nil
}

// Validate reports the first invalid setting, naming the field and the
// accepted values.
func (f Faults) Validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{
		{"InternalErrorP", f.InternalErrorP},
		{"ThrottleP", f.ThrottleP},
		{"CommitThenFailP", f.CommitThenFailP},
		{"LatencyP", f.LatencyP},
	} {
		// The negated form also rejects NaN.
		if !(p.v >= 0 && p.v <= 1) {
			return fmt.Errorf("sandbox: faults: %s must be a probability between 0 and 1", p.name)
		}
	}
	if f.Latency < 0 {
		return fmt.Errorf("sandbox: faults: Latency must not be negative")
	}
	for _, m := range f.CommitThenFailModes {
		if !slices.Contains(AllCommitFailModes, m) {
			return fmt.Errorf("sandbox: faults: CommitThenFailModes: unknown mode, want %s, %s or %s",
				CommitFailBadGateway, CommitFailDrop, CommitFailHang)
		}
	}
	return nil
}

func (f Faults) clone() Faults {
	f.CommitThenFailModes = slices.Clone(f.CommitThenFailModes)
	f.Actions = slices.Clone(f.Actions)
	return f
}

// faultDecision is what fault injection does to one admitted call.
type faultDecision struct {
	latency       time.Duration
	internalError bool
	throttle      bool
	commitFail    CommitFailMode // empty: none
}

// faultPicker draws fault decisions; the caller serialises access.
type faultPicker struct {
	faults Faults
	rng    *rand.Rand
	next   int // round-robin position in the commit-then-fail modes
}

// decide draws the faults of one admitted call of action. The same number
// of values is drawn for every call the faults apply to, so a change in
// one probability does not reshuffle the others' sequence.
func (p *faultPicker) decide(action string) faultDecision {
	f := &p.faults
	if len(f.Actions) > 0 && !slices.Contains(f.Actions, action) {
		return faultDecision{}
	}
	var d faultDecision
	latency, internal, throttle, commit := p.rng.Float64(), p.rng.Float64(), p.rng.Float64(), p.rng.Float64()
	if latency < f.LatencyP {
		d.latency = f.Latency
	}
	switch {
	case internal < f.InternalErrorP:
		d.internalError = true
	case throttle < f.ThrottleP:
		d.throttle = true
	case slices.Contains(committingActions, action) && commit < f.CommitThenFailP:
		modes := f.CommitThenFailModes
		if len(modes) == 0 {
			modes = AllCommitFailModes
		}
		if f.CommitThenFailRandom {
			d.commitFail = modes[p.rng.IntN(len(modes))]
		} else {
			d.commitFail = modes[p.next%len(modes)]
			p.next++
		}
	}
	return d
}
