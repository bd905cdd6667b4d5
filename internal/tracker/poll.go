package tracker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

const (
	// pageSize is the API's largest Limit for DescribeRunGroups and
	// DescribeRuns (omics-api.md §3.1, §3.2).
	pageSize = 100
	// maxRunPages bounds the DescribeRuns pages of one call's groups
	// (100,000 runs).
	maxRunPages = 1000
)

// CycleStats describes one poll cycle.
type CycleStats struct {
	// Started is when the cycle began; Duration how long it took, budget
	// waits included.
	Started  time.Time
	Duration time.Duration
	// Groups is the number of active run groups polled; Seen those the
	// API reported.
	Groups, Seen int
	// DescribeRunGroups and DescribeRuns count the calls made.
	DescribeRunGroups, DescribeRuns int
	// TerminateRunGroup counts the calls for cancelled batches' groups.
	TerminateRunGroup int
	// Events counts events added to the status stream.
	Events int
	// Errors counts failed calls, publishes and writes (retried next cycle).
	Errors int
}

// cycle polls every active run group once: grouped by project, up to
// idsPerCall run group IDs per DescribeRunGroups call (so N groups cost
// ceil(N/100) calls), then DescribeRuns for the batches whose runs may have
// changed, then the events.
func (t *Tracker) cycle(ctx context.Context, st *state) CycleStats {
	cs := CycleStats{Started: t.now()}
	byProject := make(map[string][]tracked)
	for _, tr := range st.snapshot() {
		if tr.entry.Unresolved {
			continue
		}
		byProject[tr.entry.ProjectID] = append(byProject[tr.entry.ProjectID], tr)
	}
	projects := make([]string, 0, len(byProject))
	for p, list := range byProject {
		projects = append(projects, p)
		// Seen longest ago first: a cycle cut short (shutdown, lost lease)
		// has then polled the groups waiting longest.
		slices.SortFunc(list, func(a, b tracked) int { return cmp.Compare(a.seen.UnixNano(), b.seen.UnixNano()) })
	}
	slices.Sort(projects)
	for _, p := range projects {
		list := byProject[p]
		cs.Groups += len(list)
		for chunk := range slices.Chunk(list, t.idsPerCall) {
			if ctx.Err() != nil {
				return t.finish(cs)
			}
			t.pollChunk(ctx, st, p, chunk, &cs)
		}
	}
	if st.batches != nil {
		t.terminateCancelled(ctx, st, st.batches, &cs)
	}
	return t.finish(cs)
}

func (t *Tracker) finish(cs CycleStats) CycleStats {
	cs.Duration = t.now().Sub(cs.Started)
	return cs
}

// pollChunk describes one chunk of groups of one project and acts on what
// changed.
func (t *Tracker) pollChunk(ctx context.Context, st *state, project string, chunk []tracked, cs *CycleStats) {
	ids := make([]string, len(chunk))
	for i, tr := range chunk {
		ids[i] = tr.entry.RunGroupID
	}
	groups, err := t.describeGroups(ctx, project, ids, cs)
	if err != nil {
		return
	}
	var batches []string
	for _, tr := range chunk {
		if g, ok := groups[tr.entry.RunGroupID]; ok && needsRuns(tr.entry, g) {
			batches = append(batches, g.RunGroupId)
		}
	}
	runs, complete := t.describeRuns(ctx, project, batches, cs)
	now := t.now()
	for _, tr := range chunk {
		g, ok := groups[tr.entry.RunGroupID]
		if !ok {
			continue // not visible yet
		}
		cs.Seen++
		st.markSeen(tr.token, now)
		t.apply(ctx, st, tr, g, runs[g.RunGroupId], complete[g.RunGroupId], cs)
	}
}

// describeGroups makes one DescribeRunGroups call for ids and returns the
// groups by RunGroupId.
func (t *Tracker) describeGroups(ctx context.Context, project string, ids []string, cs *CycleStats) (map[string]*submit.RunGroup, error) {
	limit := uint64(pageSize)
	req := &submit.DescribeRunGroupsRequest{
		ProjectId: projectParam(project), Filters: []submit.Filter{{Name: "RunGroupId", Values: ids}}, Limit: &limit,
	}
	var resp *submit.DescribeRunGroupsResponse
	err := t.call(ctx, metrics.ActionDescribeRunGroups, t.groupsBudget, &cs.DescribeRunGroups, func(ctx context.Context) (err error) {
		resp, err = t.api.DescribeRunGroups(ctx, req)
		return err
	})
	if err != nil {
		cs.Errors++
		return nil, err
	}
	out := make(map[string]*submit.RunGroup, len(resp.RunGroups))
	for i := range resp.RunGroups {
		g := &resp.RunGroups[i]
		out[g.RunGroupId] = g
	}
	return out, nil
}

// describeRuns lists the runs of the groups ids (one filter, 100 runs a
// page) and reports per group whether its listing is complete.
func (t *Tracker) describeRuns(ctx context.Context, project string, ids []string, cs *CycleStats) (map[string][]submit.Run, map[string]bool) {
	runs, complete := make(map[string][]submit.Run), make(map[string]bool)
	if len(ids) == 0 {
		return runs, complete
	}
	limit := uint64(pageSize)
	var offset uint64
	for range maxRunPages {
		req := &submit.DescribeRunsRequest{ProjectId: projectParam(project),
			Filters: []submit.Filter{{Name: "RunGroupId", Values: ids}}, Limit: &limit, Offset: new(offset)}
		var resp *submit.DescribeRunsResponse
		err := t.call(ctx, metrics.ActionDescribeRuns, t.runsBudget, &cs.DescribeRuns, func(ctx context.Context) (err error) {
			resp, err = t.api.DescribeRuns(ctx, req)
			return err
		})
		if err != nil {
			cs.Errors++
			return runs, complete // what was listed still gets its events; no group is complete
		}
		for _, r := range resp.Runs {
			runs[r.RunGroupId] = append(runs[r.RunGroupId], r)
		}
		offset += uint64(len(resp.Runs))
		if len(resp.Runs) == 0 || offset >= resp.TotalCount {
			for _, id := range ids {
				complete[id] = true
			}
			return runs, complete
		}
	}
	return runs, complete
}

// call waits for the budget, makes one API call, counts it in *calls and
// records it.
func (t *Tracker) call(ctx context.Context, action string, b budget, calls *int, do func(context.Context) error) error {
	waited, err := b.wait(ctx)
	t.metrics.RateLimitWait(waited)
	if err != nil {
		return err
	}
	start := t.now()
	err = do(ctx)
	elapsed := t.now().Sub(start)
	*calls++
	// DescribeRuns is counted in the tracker's series only (see
	// metrics.ActionDescribeRuns).
	shared := action == metrics.ActionDescribeRunGroups
	if err == nil {
		t.metrics.TrackerDescribeCall(action, 0)
		if shared {
			t.metrics.APICallSucceeded(action, elapsed)
		}
		return nil
	}
	apiErr, ok := errors.AsType[*submit.Error](err)
	if !ok {
		apiErr = &submit.Error{Action: action, Class: submit.ClassAmbiguous, Code: submit.CodeInvalidResponse}
	}
	t.metrics.TrackerDescribeCall(action, apiErr.Class)
	if shared {
		t.metrics.APICallFailed(action, apiErr.Class, submit.MetricCode(apiErr.Code), elapsed)
	}
	if apiErr.Class == submit.ClassThrottled && b.global != nil {
		b.global.Throttled(ctx)
	}
	if ctx.Err() == nil {
		t.failed("call "+action+" (retried next cycle)", apiErr) // Error() holds no request values
	}
	return err
}

// projectParam is the ProjectId parameter: nil for the default project.
func projectParam(p string) *string {
	if p == "" {
		return nil
	}
	return &p
}
