package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Run and run-group statuses. The API does not enumerate them (omics-api.md
// §3.1); a third-party document shows the title-case Succeeded and Failed,
// and the sandbox assumes the rest in the same style. Clients should
// compare case-insensitively and treat unknown values as not terminal.
const (
	StatusPending    = "Pending"    // created, not started yet
	StatusRunning    = "Running"    // started (a group: at least one run left Pending)
	StatusSucceeded  = "Succeeded"  // terminal
	StatusFailed     = "Failed"     // terminal; a group with any failed run
	StatusTerminated = "Terminated" // terminal: stopped by TerminateRunGroup
)

// statusOrder is the order of RunStatusCounts; statuses set with
// SetRunGroupStatus that are not listed come after these.
var statusOrder = []string{StatusPending, StatusRunning, StatusSucceeded, StatusFailed, StatusTerminated}

// isTerminal reports whether status is final. Case-insensitive, because
// SetRunGroupStatus accepts any spelling.
func isTerminal(status string) bool {
	return strings.EqualFold(status, StatusSucceeded) || strings.EqualFold(status, StatusFailed) ||
		strings.EqualFold(status, StatusTerminated)
}

// isRetryable reports whether RetryRuns may re-execute a run in status: it
// ended without succeeding.
func isRetryable(status string) bool {
	return strings.EqualFold(status, StatusFailed) || strings.EqualFold(status, StatusTerminated)
}

// DefaultRetryLimit is the RetryRuns limit when Execution.RetryLimit is 0.
// The API documents FailedOperation.RetryLimitExceeded but not the limit.
const DefaultRetryLimit = 3

// defaultFailureMessage is a failed run's ErrorMessage when
// Execution.FailureMessages is empty.
const defaultFailureMessage = "the workflow failed (simulated by the sandbox)"

// Execution models the runs of each run group: Pending for QueueDelay,
// then Running for a duration drawn from [DurationMin, DurationMax], then
// Succeeded, or Failed with probability FailureRate. Each run's times and
// outcome are drawn once, when its group is created, from a seeded stream
// of their own (so enabling the model changes neither run-group IDs, fault
// sequences nor visibility lags); statuses are then computed from the
// server clock on every read. The zero value is off: runs stay Pending
// until Server.SetRunGroupStatus or TerminateRunGroup changes them.
type Execution struct {
	// Enabled turns the lifecycle on for groups created from then on.
	Enabled bool `json:"enabled"`
	// QueueDelay is how long a run stays Pending.
	QueueDelay time.Duration `json:"-"`
	// DurationMin and DurationMax bound how long a run stays Running; each
	// run's duration is uniform in [DurationMin, DurationMax]. A
	// DurationMax of 0 means exactly DurationMin.
	DurationMin time.Duration `json:"-"`
	DurationMax time.Duration `json:"-"`
	// FailureRate is the probability that a run ends Failed rather than
	// Succeeded.
	FailureRate float64 `json:"failure_rate"`
	// FailureMessages are the ErrorMessages of failed runs, one drawn per
	// failed run; empty means a generic message.
	FailureMessages []string `json:"failure_messages,omitempty"`
	// RetryLimit is the longest chain of RetryRuns: a group that is the
	// RetryLimit-th retry of an original group cannot be retried again
	// (FailedOperation.RetryLimitExceeded). 0 means DefaultRetryLimit. It
	// applies whether or not Enabled is set.
	RetryLimit int `json:"retry_limit"`
}

// MarshalJSON encodes e with its durations as Go duration strings, like
// Faults.Latency.
func (e Execution) MarshalJSON() ([]byte, error) {
	type plain Execution // no MarshalJSON: avoids recursion
	return json.Marshal(struct {
		plain
		QueueDelay  string `json:"queue_delay"`
		DurationMin string `json:"duration_min"`
		DurationMax string `json:"duration_max"`
	}{plain(e), e.QueueDelay.String(), e.DurationMin.String(), e.DurationMax.String()})
}

// UnmarshalJSON decodes the form MarshalJSON produces; unknown keys are
// rejected so a misspelt knob does not silently do nothing. Absent keys
// are zero.
func (e *Execution) UnmarshalJSON(b []byte) error {
	type plain Execution
	var w struct {
		plain
		QueueDelay  string `json:"queue_delay"`
		DurationMin string `json:"duration_min"`
		DurationMax string `json:"duration_max"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("sandbox: execution: %w", err)
	}
	*e = Execution(w.plain)
	for _, d := range []struct {
		name, text string
		into       *time.Duration
	}{{"queue_delay", w.QueueDelay, &e.QueueDelay}, {"duration_min", w.DurationMin, &e.DurationMin},
		{"duration_max", w.DurationMax, &e.DurationMax}} {
		if d.text == "" {
			continue
		}
		parsed, err := time.ParseDuration(d.text)
		if err != nil {
			return fmt.Errorf("sandbox: execution: %s: %w", d.name, err)
		}
		*d.into = parsed
	}
	return nil
}

// Validate reports the first invalid setting, naming the field.
func (e Execution) Validate() error {
	switch {
	case e.QueueDelay < 0:
		return fmt.Errorf("sandbox: execution: QueueDelay must not be negative")
	case e.DurationMin < 0:
		return fmt.Errorf("sandbox: execution: DurationMin must not be negative")
	case e.DurationMax != 0 && e.DurationMax < e.DurationMin:
		return fmt.Errorf("sandbox: execution: DurationMax must be 0 or at least DurationMin")
	case !(e.FailureRate >= 0 && e.FailureRate <= 1): // also rejects NaN
		return fmt.Errorf("sandbox: execution: FailureRate must be a probability between 0 and 1")
	case e.RetryLimit < 0:
		return fmt.Errorf("sandbox: execution: RetryLimit must not be negative (0 means %d)", DefaultRetryLimit)
	}
	return nil
}

func (e Execution) clone() Execution {
	e.FailureMessages = slices.Clone(e.FailureMessages)
	return e
}

func (e Execution) retryLimit() int {
	if e.RetryLimit == 0 {
		return DefaultRetryLimit
	}
	return e.RetryLimit
}

// runPlan is a run's drawn lifecycle: Pending until start, Running until
// end, then Failed (with message) or Succeeded.
type runPlan struct {
	start, end time.Time
	failed     bool
	message    string
}

// plan draws the lifecycle of a run created at created. It draws the same
// number of values whatever the settings, so changing FailureRate does not
// reshuffle the durations of a seed.
func (e *Execution) plan(rng *rand.Rand, created time.Time) *runPlan {
	span, fail, pick := rng.Float64(), rng.Float64(), rng.Uint64()
	if !e.Enabled {
		return nil
	}
	d := e.DurationMin
	if e.DurationMax > e.DurationMin {
		d += time.Duration(span * float64(e.DurationMax-e.DurationMin))
	}
	p := &runPlan{start: created.Add(e.QueueDelay)}
	p.end = p.start.Add(d)
	if fail < e.FailureRate {
		p.failed, p.message = true, defaultFailureMessage
		if n := len(e.FailureMessages); n > 0 {
			p.message = e.FailureMessages[pick%uint64(n)]
		}
	}
	return p
}

// runState is a run's status at one moment and the times that led there;
// a zero time is one not reached.
type runState struct {
	status     string
	start, end time.Time
	updated    time.Time
	message    string
}

// baseState is the run's state at now from its plan and termination,
// before any SetRunGroupStatus override.
func (r *storedRun) baseState(created, now time.Time) runState {
	at := now
	if !r.terminatedAt.IsZero() {
		at = r.terminatedAt // nothing happens to a run after it was stopped
	}
	st := runState{status: StatusPending, updated: created}
	if p := r.plan; p != nil && !at.Before(p.start) {
		st.status, st.start, st.updated = StatusRunning, p.start, p.start
		if !at.Before(p.end) {
			st.status, st.end, st.updated = StatusSucceeded, p.end, p.end
			if p.failed {
				st.status, st.message = StatusFailed, p.message
			}
		}
	}
	if !r.terminatedAt.IsZero() {
		st.status, st.end, st.updated = StatusTerminated, r.terminatedAt, r.terminatedAt
	}
	return st
}

// stateOf is the run's state at now as the API reports it: the override of
// SetRunGroupStatus, if any, replaces the status.
func (sg *storedGroup) stateOf(r *storedRun, now time.Time) runState {
	st := r.baseState(sg.created, now)
	if sg.override != "" {
		st.status = sg.override
		if sg.overrideAt.After(st.updated) {
			st.updated = sg.overrideAt
		}
		if !strings.EqualFold(st.status, StatusFailed) {
			st.message = ""
		}
	}
	return st
}

// groupSummary is a run group's derived state at one moment.
type groupSummary struct {
	status     string
	counts     []RunStatusCount
	start, end time.Time
	updated    time.Time
	message    string
}

// summary derives the group's state from its runs at now: terminal when
// every run is, then Failed if any run failed, else Terminated if any was
// stopped, else Succeeded; otherwise Running once any run left Pending.
func (sg *storedGroup) summary(now time.Time) groupSummary {
	sum := groupSummary{updated: sg.created}
	var started, allTerminal, failed, terminated = false, true, false, false
	for _, r := range sg.runs {
		st := sg.stateOf(r, now)
		sum.counts = addCount(sum.counts, st.status)
		if !st.start.IsZero() && (sum.start.IsZero() || st.start.Before(sum.start)) {
			sum.start = st.start
		}
		sum.end = later(sum.end, st.end)
		sum.updated = later(sum.updated, st.updated)
		started = started || st.status != StatusPending
		allTerminal = allTerminal && isTerminal(st.status)
		if strings.EqualFold(st.status, StatusFailed) {
			if !failed {
				sum.message = st.message
			}
			failed = true
		}
		terminated = terminated || st.status == StatusTerminated
	}
	switch {
	case sg.override != "":
		sum.status = sg.override
	case allTerminal && failed:
		sum.status = StatusFailed
	case allTerminal && terminated:
		sum.status = StatusTerminated
	case allTerminal:
		sum.status = StatusSucceeded
	case started:
		sum.status = StatusRunning
	default:
		sum.status = StatusPending
	}
	if !allTerminal {
		sum.end = time.Time{} // the group has not ended while a run goes on
	}
	sortCounts(sum.counts)
	return sum
}

func addCount(counts []RunStatusCount, status string) []RunStatusCount {
	for i := range counts {
		if counts[i].Status == status {
			counts[i].Count++
			return counts
		}
	}
	return append(counts, RunStatusCount{Status: status, Count: 1})
}

// sortCounts orders counts by statusOrder, unknown statuses last in the
// order they first appeared, so answers are stable.
func sortCounts(counts []RunStatusCount) {
	rank := func(s string) int {
		if i := slices.Index(statusOrder, s); i >= 0 {
			return i
		}
		return len(statusOrder)
	}
	slices.SortStableFunc(counts, func(a, b RunStatusCount) int { return rank(a.Status) - rank(b.Status) })
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// apiTime formats t like the API's examples, RFC 3339 in +08:00; the zero
// time is "".
func apiTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(chinaStandardTime).Format(time.RFC3339)
}

// SetExecution replaces the execution model. A run's lifecycle is drawn
// when its group is created, so the new settings apply to groups created
// from now on; RetryLimit applies to the next RetryRuns call. The random
// source continues; it is not reseeded.
func (s *Server) SetExecution(e Execution) error {
	if err := e.Validate(); err != nil {
		return err
	}
	s.store.setExecution(e.clone())
	return nil
}

// Execution returns the current execution model.
func (s *Server) Execution() Execution { return s.store.execution() }
