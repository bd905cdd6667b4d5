package rerun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/tracker"
)

// errLost means another process wrote the record meanwhile: this one no
// longer holds the key and must stop before any call.
var errLost = errors.New("rerun: the retry record changed under this process")

// job is one Retry of one key: the runs entry and the record as read, and
// the source group once described.
type job struct {
	r        *Retrier
	key      string
	token    string
	o        Options
	entry    tracker.Entry
	entryRev uint64
	rec      Record
	recRev   uint64 // 0: no record yet
	src      *submit.RunGroup
	// found is the last lookup by Name.
	found []submit.RunGroup
	// throttles counts throttled calls, which do not count as calls.
	throttles int
}

// Retry retries the key's failed run group once: it refuses unless the
// group ended failed or terminated, records the intent, calls RetryRuns,
// reconciles an ambiguous outcome by Name, and has the tracker follow the
// new group. An open attempt left by a process that stopped is resumed,
// not started afresh. The error is for failures to read or write the
// buckets or reach the API for lookups; decisions are Outcomes.
func (r *Retrier) Retry(ctx context.Context, key string, o Options) (Outcome, error) {
	j := &job{r: r, key: key, token: client.KeyToken(key), o: o}
	out := Outcome{Key: key}
	if _, busy := r.inProcess.LoadOrStore(j.token, true); busy {
		// The records share one holder name per process, so goroutines
		// of one process are told apart here.
		out.Kind, out.Reason = KindBusy, "retried by this process already"
		return out, nil
	}
	defer r.inProcess.Delete(j.token)
	if err := j.load(ctx); errors.Is(err, jetstream.ErrKeyNotFound) {
		out.Kind, out.Reason = KindRefused, ReasonNotTracked
		return out, nil
	} else if err != nil {
		return out, err
	}
	out.SourceGroup, out.Status = j.entry.RunGroupID, j.entry.Status
	if a := j.rec.open(); a != nil {
		if j.rec.heldByOther(r.holder, r.now()) {
			out.Kind, out.Reason, out.Attempt = KindBusy, "held by "+j.rec.Holder, a.N
			return out, nil
		}
		return j.drive(ctx)
	}
	if a := j.rec.createdFrom(j.entry.RunGroupID); a != nil {
		// A crash came between creating the group and following it.
		out.Kind, out.NewGroup, out.Attempt = KindAlready, a.NewGroup, a.N
		return out, j.follow(ctx, a.NewGroup)
	}
	if reason := j.refusal(); reason != "" {
		out.Kind, out.Reason = KindRefused, reason
		return out, nil
	}
	if b := j.entry.BatchID; b != "" && r.cfg.BatchCancelled != nil && r.cfg.BatchCancelled(ctx, b) {
		out.Kind, out.Reason = KindRefused, ReasonBatchCancelled
		return out, nil
	}
	if err := j.begin(ctx); err != nil {
		if errors.Is(err, errLost) {
			out.Kind, out.Reason = KindBusy, "another process started a retry"
			return out, nil
		}
		return out, err
	}
	if a := j.rec.createdFrom(j.entry.RunGroupID); a != nil {
		j.rec.Holder, j.rec.HeldUntil = "", time.Time{}
		out.Kind, out.NewGroup, out.Attempt = KindFound, a.NewGroup, a.N
		if err := j.write(ctx); err != nil {
			return out, err
		}
		return out, j.follow(ctx, a.NewGroup)
	}
	return j.drive(ctx)
}

// load reads the key's runs entry and retry record.
func (j *job) load(ctx context.Context) error {
	kve, err := j.r.runs.Get(ctx, j.token)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(kve.Value(), &j.entry); err != nil {
		return fmt.Errorf("decode the runs entry: %w", err)
	}
	j.entryRev = kve.Revision()
	kve, err = j.r.record.Get(ctx, j.token)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		j.rec, j.recRev = Record{Key: j.key}, 0
		return nil
	case err != nil:
		return fmt.Errorf("read the retry record: %w", err)
	}
	j.recRev = kve.Revision()
	return json.Unmarshal(kve.Value(), &j.rec)
}

// refusal says why the key's group is not to be retried, or "".
func (j *job) refusal() string {
	e := j.entry
	switch {
	case e.Unresolved:
		return ReasonProjectUnresolved
	case j.o.ExpectGroup != "" && e.RunGroupID != j.o.ExpectGroup:
		return ReasonStale
	case !e.Terminal:
		return ReasonNotEnded
	case !client.IsFailedStatus(e.Status):
		return ReasonSucceeded
	case j.o.MaxRetries > 0 && j.rec.Created() >= j.o.MaxRetries:
		return ReasonLimit
	}
	return ""
}

// begin opens an attempt: it describes the source group, lists the groups
// with its Name, and records the attempt (not yet a call).
func (j *job) begin(ctx context.Context) error {
	if err := j.describeSource(ctx); err != nil {
		return err
	}
	groups, err := j.byName(ctx)
	if err != nil {
		return err
	}
	late := ""
	for _, prev := range j.rec.lateCandidates(j.entry.RunGroupID) {
		if id, ok := j.candidate(prev); ok {
			late = id
			break
		}
	}
	known := []string{j.entry.RunGroupID}
	for _, g := range append(groups, j.rec.createdGroups()...) {
		if !slices.Contains(known, g) {
			known = append(known, g)
		}
	}
	now := j.r.now().UTC()
	a := Attempt{
		N: len(j.rec.Attempts) + 1, Trigger: j.o.Trigger, By: j.o.By, SourceGroup: j.entry.RunGroupID,
		KnownGroups: known, StartedAt: now, State: StateIntent, CallCache: j.o.CallCache && j.isWDL(),
	}
	if late != "" {
		// An earlier attempt's call created it after all, later than its
		// horizon: it is recorded, and nothing is called.
		j.r.log.Warn("a run group an earlier retry's unknown outcome created appeared after the horizon; following it",
			"key", j.key, "run_group_id", late)
		a.KnownGroups = slices.DeleteFunc(a.KnownGroups, func(id string) bool { return id == late })
		a.State, a.NewGroup, a.Reconciled, a.SettledAt = StateCreated, late, true, now
	}
	j.rec.Attempts = append(j.rec.Attempts, a)
	return j.save(ctx)
}

// drive works the open attempt to an end: calls while nothing may have
// been created, lookups until the horizon while something may.
func (j *job) drive(ctx context.Context) (Outcome, error) {
	a := j.rec.open()
	out := Outcome{Key: j.key, SourceGroup: a.SourceGroup, Attempt: a.N, Status: j.entry.Status}
	if j.src == nil {
		if err := j.describeSource(ctx); err != nil {
			return j.stop(ctx, out, err)
		}
	}
	for {
		a = j.rec.open()
		if a.MaybeCreated {
			done, err := j.reconcile(ctx, a)
			if err != nil || done {
				return j.finish(ctx, out, err)
			}
			continue
		}
		if a.Calls >= j.r.cfg.MaxCalls {
			a.State, a.SettledAt = StateRefused, j.r.now().UTC()
			out.Kind, out.Reason, out.Code = KindRefused, ReasonNothingVisible, a.Code
			return out, j.settle(ctx)
		}
		done, err := j.call(ctx, a)
		if err != nil || done {
			return j.finish(ctx, out, err)
		}
	}
}

// finish reports the settled attempt (or stops on err).
func (j *job) finish(ctx context.Context, out Outcome, err error) (Outcome, error) {
	if err != nil {
		return j.stop(ctx, out, err)
	}
	a := &j.rec.Attempts[out.Attempt-1]
	out.NewGroup, out.Code = a.NewGroup, a.Code
	switch {
	case a.State == StateCreated && a.Reconciled:
		out.Kind = KindFound
	case a.State == StateCreated:
		out.Kind = KindCreated
	default:
		out.Kind, out.Reason = KindRefused, ReasonAPI
	}
	return out, nil
}

// stop ends a retry that could not settle: the record keeps the open
// attempt (so the next retry resumes it) and is released for others.
func (j *job) stop(ctx context.Context, out Outcome, err error) (Outcome, error) {
	if errors.Is(err, errLost) {
		out.Kind, out.Reason = KindBusy, "another process took the retry over"
		return out, nil
	}
	out.Kind, out.Reason = KindUnresolved, "stopped while a new group may exist; retry the key again to go on"
	j.release(ctx)
	if ctx.Err() != nil {
		return out, nil
	}
	return out, err
}

// call makes one RetryRuns call after recording its intent, and records
// its answer. It reports done when the attempt settled.
func (j *job) call(ctx context.Context, a *Attempt) (bool, error) {
	if lim := j.r.cfg.RetryLimiter; lim != nil {
		if _, err := lim.Wait(ctx); err != nil {
			return false, err
		}
	}
	// The intent goes after the token, so a grant that came late cannot
	// race another holder (the write fails first).
	a.Calls++
	a.State, a.LastCallAt, a.MaybeCreated = StateIntent, j.r.now().UTC(), true
	if err := j.save(ctx); err != nil {
		return false, err
	}
	resp, err := j.r.cfg.API.RetryRuns(ctx, j.request(a))
	a = j.rec.open()
	if err == nil {
		return true, j.created(ctx, a, resp.RunGroupId, false)
	}
	apiErr, ok := errors.AsType[*submit.Error](err)
	if !ok {
		apiErr = &submit.Error{Action: "RetryRuns", Class: submit.ClassAmbiguous, Code: submit.CodeInvalidResponse}
	}
	a.Code = apiErr.Code
	switch {
	case apiErr.Class == submit.ClassThrottled:
		a.Calls-- // refused before execution: not a call
		a.MaybeCreated = false
		j.throttles++
		if lim := j.r.cfg.RetryLimiter; lim != nil {
			lim.Throttled(ctx)
		}
		if err := j.save(ctx); err != nil {
			return false, err
		}
		return false, sleep(ctx, min(time.Duration(j.throttles)*time.Second, 10*time.Second))
	case apiErr.NothingDone() || apiErr.Class == submit.ClassPermanent:
		// A refusal: this call created nothing, and no earlier call of the
		// attempt may have (calls are made only then).
		a.State, a.MaybeCreated, a.SettledAt = StateRefused, false, j.r.now().UTC()
		return true, j.settle(ctx)
	}
	j.r.log.Warn("RetryRuns outcome unknown; looking the new run group up by Name before any other call",
		"key", j.key, "run_group_id", a.SourceGroup, "error", apiErr)
	a.State, a.MaybeCreated = StateAmbiguous, true
	a.Ambiguous++
	return false, j.save(ctx)
}

// created records the new group and has the tracker follow it. The API's
// answer (or the lookup's) is authoritative: a lost claim does not undo it.
func (j *job) created(ctx context.Context, a *Attempt, group string, reconciled bool) error {
	a.State, a.NewGroup, a.Reconciled, a.MaybeCreated = StateCreated, group, reconciled, false
	a.SettledAt = j.r.now().UTC()
	if err := j.settle(ctx); errors.Is(err, errLost) {
		if err := j.force(ctx, *a); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return j.follow(ctx, group)
}

// request is the RetryRuns call: every failed or terminated run of the
// source group, with its own options, and UseCallCache turned on for a WDL
// group. WDLOption replaces the group's options, so they are sent back
// whole; a Nextflow group's NFOption is left out (nil keeps the group's).
func (j *job) request(a *Attempt) *submit.RetryRunsRequest {
	req := &submit.RetryRunsRequest{ProjectId: projectParam(j.entry.ProjectID), RunGroupId: a.SourceGroup}
	if a.CallCache {
		opt := submit.RunOption{}
		if j.src != nil && j.src.Option != nil {
			opt = *j.src.Option
		}
		// A listing may show an unset option as "": sent back, it would
		// be a value the API need not accept.
		for _, p := range []**string{&opt.FailureMode, &opt.FinalWorkflowOutputsDir} {
			if *p != nil && **p == "" {
				*p = nil
			}
		}
		opt.UseCallCache = new(true)
		req.WDLOption = &opt
	}
	return req
}

func (j *job) isWDL() bool {
	return j.src != nil && (strings.EqualFold(j.src.Type, "WDL") || j.src.Type == "" && j.src.NFOption == nil)
}

func projectParam(p string) *string {
	if p == "" {
		return nil
	}
	return &p
}

// lookupDelay is the wait before the next lookup: doubling from
// LookupInitial to LookupMax, jittered, and never past the horizon.
func (j *job) lookupDelay(lookups int, until time.Time) time.Duration {
	d := j.r.cfg.LookupInitial
	for i := 1; i < lookups && d < j.r.cfg.LookupMax; i++ {
		d *= 2
	}
	d = time.Duration(float64(min(d, j.r.cfg.LookupMax)) * (0.5 + rand.Float64()))
	if left := until.Sub(j.r.now()); left > 0 && d > left {
		d = left
	}
	return max(d, 50*time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
