// Package redrive owns the rules of redriving dead letters: which ones a
// selection redrives (the newest of each key, unless a newer one the
// selection does not match supersedes it or the key already has a result),
// the --set edits, re-validation, and the identity guard that refuses a
// redrive that could create a second run group. enqueue dlq redrive and the
// console share it, so both follow the same no-double-submit rules; a plan
// is computed first, so either can preview it before changing anything.
package redrive

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
)

// Kind is what a step does.
type Kind int

// Kinds of step.
const (
	// Redrive republishes Request and deletes the dead letter.
	Redrive Kind = iota + 1
	// DeleteSuperseded deletes an older selected dead letter of a key whose
	// newest one is redriven.
	DeleteSuperseded
	// Skip leaves the dead letter where it is, for Why.
	Skip
	// Fail means the rules could not be applied (Err).
	Fail
)

// Step is the plan for one dead letter.
type Step struct {
	Kind Kind
	Dead client.StoredDeadLetter
	// Request is what Redrive republishes: the request, edited, validated
	// and canonical.
	Request client.Request
	Why     string
	// SupersededBy is the redriven sequence of a DeleteSuperseded step.
	SupersededBy uint64
	// Refused marks a Skip decided by the identity guard.
	Refused bool
	// Unchecked says why a Redrive was not compared with the ledger (the
	// worker compares it at delivery).
	Unchecked error
	Err       error
}

// Plan is every step of a redrive, in execution order.
type Plan struct {
	Steps []Step
	// Scanned counts the dead letters read.
	Scanned int
}

// Planner computes plans.
type Planner struct {
	Client *client.Client
	Guard  *Guard
	Limits submit.Limits
}

// Plan reads the dead letters and decides, key by key, what a redrive of
// those f selects with edits would do. It changes nothing.
func (p Planner) Plan(ctx context.Context, f client.DeadLetterFilter, edits []Edit) (Plan, error) {
	return p.PlanMatching(ctx, f.Key, f.Match, edits)
}

// PlanMatching is Plan for the dead letters match selects (a console's
// selection by sequence or by a filter of its own) among those of key (""
// for every key); the rules are Plan's.
func (p Planner) PlanMatching(ctx context.Context, key string, match func(client.StoredDeadLetter) bool, edits []Edit) (Plan, error) {
	var plan Plan
	newest := map[string]uint64{}
	byKey := map[string][]client.StoredDeadLetter{}
	var keys []string
	for d, err := range p.Client.DeadLetters(ctx, client.DeadLetterFilter{Key: key}) {
		if err != nil {
			return Plan{}, err
		}
		plan.Scanned++
		newest[d.Key] = max(newest[d.Key], d.Sequence)
		if !match(d) {
			continue
		}
		if _, ok := byKey[d.Key]; !ok {
			keys = append(keys, d.Key)
		}
		byKey[d.Key] = append(byKey[d.Key], d)
	}
	for _, key := range keys {
		group := byKey[key]
		slices.SortFunc(group, func(a, b client.StoredDeadLetter) int { return cmp.Compare(b.Sequence, a.Sequence) })
		plan.Steps = append(plan.Steps, p.planKey(ctx, group, newest[key], edits)...)
	}
	return plan, nil
}

// planKey plans one key's selected dead letters, newest first.
func (p Planner) planKey(ctx context.Context, group []client.StoredDeadLetter, newest uint64, edits []Edit) []Step {
	e := group[0]
	skipAll := func(why string, refused bool) []Step {
		steps := make([]Step, len(group))
		for i, d := range group {
			steps[i] = Step{Kind: Skip, Dead: d, Why: why, Refused: refused}
		}
		return steps
	}
	switch {
	case newest > e.Sequence:
		return skipAll(fmt.Sprintf("superseded by seq %d, which the selection does not match", newest), false)
	case e.DeadLetter == nil:
		return skipAll("not a dead-letter document", false)
	case len(e.DeadLetter.Request) == 0 || string(e.DeadLetter.Request) == "null":
		return skipAll("raw (non-JSON) dead letter: nothing to re-validate; fix and republish it by hand", false)
	}
	res, has, err := p.Client.Result(ctx, e.Key)
	if err != nil {
		return []Step{{Kind: Fail, Dead: e, Err: fmt.Errorf("look up result: %w", err)}}
	}
	if has {
		rg := "unreadable"
		if res.Result != nil {
			rg = res.Result.RunGroupID
		}
		return skipAll("the key already has a result (run group "+rg+")", false)
	}
	body, err := Apply(e.DeadLetter.Request, edits)
	if err != nil {
		return skipAll("--set: "+err.Error(), false)
	}
	req, err := client.NewRequest(body, e.Key, p.Limits.MaxRequestBytes)
	if ie, ok := errors.AsType[*client.InvalidRequestError](err); ok {
		return skipAll("re-validation failed: "+describe(ie), false)
	} else if err != nil {
		return skipAll("re-validation failed: "+err.Error(), false)
	}
	refusal, unchecked := p.Guard.Check(ctx, e.Key, req.Body, len(edits) > 0)
	if refusal != "" {
		return skipAll(refusal, true)
	}
	steps := []Step{{Kind: Redrive, Dead: e, Request: req, Unchecked: unchecked}}
	for _, o := range group[1:] {
		steps = append(steps, Step{Kind: DeleteSuperseded, Dead: o, SupersededBy: e.Sequence})
	}
	return steps
}

// describe is "Field: Code: Reason" without empty parts.
func describe(e *client.InvalidRequestError) string {
	s := e.Reason
	if e.Code != "" {
		s = e.Code + ": " + s
	}
	if e.Field != "" {
		s = e.Field + ": " + s
	}
	return s
}

// Execute carries out one Redrive or DeleteSuperseded step.
func Execute(ctx context.Context, c *client.Client, s Step) error {
	switch s.Kind {
	case Redrive:
		_, err := c.Redrive(ctx, s.Dead, s.Request.Body)
		return err
	case DeleteSuperseded:
		return c.DeleteDeadLetter(ctx, s.Dead.Sequence)
	}
	return nil
}
