package rerun

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// createSkew is how much earlier than the attempt's start (by this
// process's clock) the API may stamp a group the attempt created: clocks
// differ. An older group is not the attempt's.
const createSkew = 5 * time.Minute

// describeSource reads the source group: its Name (the lookup's key), its
// type and its options (sent back with UseCallCache).
func (j *job) describeSource(ctx context.Context) error {
	limit := uint64(1)
	source := j.entry.RunGroupID
	if a := j.rec.open(); a != nil {
		source = a.SourceGroup
	}
	req := &submit.DescribeRunGroupsRequest{ProjectId: projectParam(j.entry.ProjectID),
		Filters: []submit.Filter{{Name: "RunGroupId", Values: []string{source}}}, Limit: &limit}
	if err := j.describeToken(ctx); err != nil {
		return err
	}
	resp, err := j.r.cfg.API.DescribeRunGroups(ctx, req)
	if err != nil {
		return fmt.Errorf("describe the run group: %w", err)
	}
	for i := range resp.RunGroups {
		if resp.RunGroups[i].RunGroupId == source {
			j.src = &resp.RunGroups[i]
			return nil
		}
	}
	return fmt.Errorf("rerun: run group %s is not listed by DescribeRunGroups", source)
}

func (j *job) describeToken(ctx context.Context) error {
	if lim := j.r.cfg.DescribeLimiter; lim != nil {
		_, err := lim.Wait(ctx)
		return err
	}
	return nil
}

// byName lists the groups with the source's exact Name (the filter may be
// fuzzy; FindRunGroupsByName compares) and returns their IDs.
func (j *job) byName(ctx context.Context) ([]string, error) {
	groups, err := j.r.cfg.API.FindRunGroupsByName(ctx, projectParam(j.entry.ProjectID), j.src.Name,
		func(ctx context.Context) error { return j.describeToken(ctx) })
	if err != nil {
		if apiErr, ok := errors.AsType[*submit.Error](err); ok && apiErr.Class == submit.ClassThrottled && j.r.cfg.DescribeLimiter != nil {
			j.r.cfg.DescribeLimiter.Throttled(ctx)
		}
		return nil, fmt.Errorf("look run groups up by Name: %w", err)
	}
	ids := make([]string, len(groups))
	for i, g := range groups {
		ids[i] = g.RunGroupId
	}
	j.found = groups
	return ids, nil
}

// candidate returns the group this attempt created, from the last lookup:
// the source's Name (exactly), application and environment, not known
// before the attempt, and not stamped long before it began. Should there
// be several, the earliest is taken (the others are logged, never
// followed): a second one can only be someone else's.
func (j *job) candidate(a *Attempt) (string, bool) {
	var picks []submit.RunGroup
	for _, g := range j.found {
		if a.known(g.RunGroupId) || g.ApplicationId != j.src.ApplicationId || g.EnvironmentId != j.src.EnvironmentId {
			continue
		}
		if t, err := time.Parse(time.RFC3339, g.CreateTime); err == nil && t.Before(a.StartedAt.Add(-createSkew)) {
			continue
		}
		picks = append(picks, g)
	}
	if len(picks) == 0 {
		return "", false
	}
	slices.SortFunc(picks, func(x, y submit.RunGroup) int {
		return cmp.Or(cmp.Compare(x.CreateTime, y.CreateTime), cmp.Compare(x.RunGroupId, y.RunGroupId))
	})
	if len(picks) > 1 {
		j.r.log.Warn("several unknown run groups share the retried group's Name; following the earliest",
			"key", j.key, "run_group_id", picks[0].RunGroupId, "others", len(picks)-1)
	}
	return picks[0].RunGroupId, true
}

// reconcile looks the attempt's new group up by Name until it is found or
// the horizon (from the last call that may have created it) has passed.
// It reports done when the attempt settled (found); otherwise nothing was
// created as far as the API can tell, and a call may follow.
func (j *job) reconcile(ctx context.Context, a *Attempt) (bool, error) {
	until := a.LastCallAt.Add(j.r.cfg.Horizon)
	if j.o.Progress != nil {
		j.o.Progress(j.key, fmt.Sprintf("RetryRuns outcome unknown (%s); looking the new group up by Name until %s",
			a.Code, until.Format(time.RFC3339)))
	}
	for lookups := 1; ; lookups++ {
		if _, err := j.byName(ctx); err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			// Lookups that fail never make the group count as absent.
			j.r.log.Warn("lookup after an ambiguous RetryRuns failed; trying again", "key", j.key, "error", err)
		} else if id, ok := j.candidate(a); ok {
			return true, j.created(ctx, a, id, true)
		} else if !j.r.now().Before(until) {
			a.MaybeCreated = false
			return false, j.save(ctx)
		}
		if err := sleep(ctx, j.lookupDelay(lookups, until)); err != nil {
			return false, err
		}
		if err := j.save(ctx); err != nil { // renews the claim while looking
			return false, err
		}
		a = j.rec.open()
	}
}
