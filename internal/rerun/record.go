package rerun

import (
	"slices"
	"time"
)

// States of an attempt, in the order they are reached.
const (
	// StateIntent: recorded before a RetryRuns call, so the call may have
	// been sent (a crash right after the write leaves it here).
	StateIntent = "intent"
	// StateAmbiguous: a call's outcome is unknown (timeout, dropped
	// connection, InternalError): a new group may exist.
	StateAmbiguous = "ambiguous"
	// StateCreated: the new group is known, answered or found by Name.
	StateCreated = "created"
	// StateRefused: the API refused the call, or nothing became visible
	// within the horizon after the last allowed call: no group was created
	// as far as the API can tell.
	StateRefused = "refused"
)

// Triggers of an attempt.
const (
	TriggerManual = "manual" // enqueue runs retry
	TriggerAuto   = "auto"   // the workers' auto-retry policy
)

// Record is a key's entry in the retries bucket (key: the key token): every
// attempt to retry its run groups, oldest first. At most one attempt is
// open (intent or ambiguous) at a time, and only its holder works on it:
// every write is a compare-and-set on the record's revision.
type Record struct {
	Key      string    `json:"key"`
	Attempts []Attempt `json:"attempts"`
	// Holder works on the open attempt until HeldUntil; a process that
	// stops cleanly clears it, and after a crash the next one waits for it.
	Holder    string    `json:"holder,omitempty"`
	HeldUntil time.Time `json:"held_until,omitzero"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Attempt is one retry of one run group. It holds no request values (the
// Name is read from the source group when needed), like the ledger.
type Attempt struct {
	N           int    `json:"n"`
	Trigger     string `json:"trigger"`
	By          string `json:"by,omitempty"`
	SourceGroup string `json:"source_group"`
	// KnownGroups are the run groups with the source's exact Name that a
	// lookup showed before the first call, plus the source and every
	// group earlier attempts created: a group found after an ambiguous
	// call is this attempt's only if it is not among them.
	KnownGroups []string  `json:"known_groups"`
	StartedAt   time.Time `json:"started_at"`
	State       string    `json:"state"`
	// Calls counts the RetryRuns calls made (intents written); LastCallAt
	// is the latest, from which the lookup horizon runs while MaybeCreated.
	Calls        int       `json:"calls"`
	LastCallAt   time.Time `json:"last_call_at,omitzero"`
	MaybeCreated bool      `json:"maybe_created,omitempty"`
	// Ambiguous counts the calls whose outcome was unknown: an attempt
	// that ended refused after one may still see its group appear late.
	Ambiguous int    `json:"ambiguous,omitempty"`
	CallCache bool   `json:"call_cache,omitempty"`
	NewGroup  string `json:"new_group,omitempty"`
	// Reconciled: the new group was found by Name after an ambiguous call.
	Reconciled bool `json:"reconciled,omitempty"`
	// Code is the API's (or the client's) error code of the last failed call.
	Code      string    `json:"code,omitempty"`
	SettledAt time.Time `json:"settled_at,omitzero"`
}

// open returns the attempt still in progress, if any.
func (r *Record) open() *Attempt {
	if n := len(r.Attempts); n > 0 {
		if a := &r.Attempts[n-1]; a.State == StateIntent || a.State == StateAmbiguous {
			return a
		}
	}
	return nil
}

// createdFrom returns the attempt that created a group from source.
func (r *Record) createdFrom(source string) *Attempt {
	for i := range r.Attempts {
		if a := &r.Attempts[i]; a.State == StateCreated && a.SourceGroup == source {
			return a
		}
	}
	return nil
}

// Created counts the groups the key's retries created.
func (r *Record) Created() int {
	n := 0
	for _, a := range r.Attempts {
		if a.State == StateCreated {
			n++
		}
	}
	return n
}

// createdGroups are the groups earlier attempts created.
func (r *Record) createdGroups() []string {
	var out []string
	for _, a := range r.Attempts {
		if a.NewGroup != "" {
			out = append(out, a.NewGroup)
		}
	}
	return out
}

// lateCandidates are the settled attempts from source that made a call
// with an unknown outcome and found nothing: a group appearing later with
// the Name is theirs.
func (r *Record) lateCandidates(source string) []*Attempt {
	var out []*Attempt
	for i := range r.Attempts {
		if a := &r.Attempts[i]; a.State == StateRefused && a.SourceGroup == source && a.Ambiguous > 0 {
			out = append(out, a)
		}
	}
	return out
}

// heldByOther reports whether another process holds the record at now.
func (r *Record) heldByOther(me string, now time.Time) bool {
	return r.Holder != "" && r.Holder != me && now.Before(r.HeldUntil)
}

func (a *Attempt) known(id string) bool { return slices.Contains(a.KnownGroups, id) }
