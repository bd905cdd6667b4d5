package sandbox

import (
	"maps"
	"slices"
	"time"
	"unicode/utf8"
)

// DescribeRuns, RetryRuns and TerminateRunGroup (omics-api.md §3.2, §3.4),
// over the runs the execution model drives (execution.go).

// describeRunsFilters are the filter names of DescribeRuns (omics-api.md
// §3.2).
var describeRunsFilters = []string{"RunGroupId", "Status", "RunUuid", "ApplicationId", "UserDefinedId"}

// Error codes of the run actions (omics-api.md §2, §3.4).
const (
	codeRunNotExist        = "ResourceNotFound.RunNotExist"
	codeStatusNotSupported = "FailedOperation.StatusNotSupported"
	codeRetryLimitExceeded = "FailedOperation.RetryLimitExceeded"
)

var (
	retryRunsKeys         = []string{"ProjectId", "RunGroupId", "RunUuids", "WDLOption", "NFOption"}
	terminateRunGroupKeys = []string{"ProjectId", "RunGroupId"}
)

func (s *Server) describeRuns(c *call, body []byte, region string) {
	pk, f, offset, limit, e := s.listParams(body, region, describeRunsFilters)
	if e != nil {
		c.fail(e)
		return
	}
	total, page := s.store.describeRuns(pk, runFilter(f), offset, limit, s.now())
	c.respond(outcomeSuccess, describeRunsAnswer{TotalCount: total, Runs: page, RequestId: c.requestID})
}

// retryRunsRequest is a RetryRuns body. RunUuids empty means every run of
// the group that did not succeed; the options nil mean the group's own.
type retryRunsRequest struct {
	ProjectId  *string
	RunGroupId string
	RunUuids   []string
	WDLOption  *runOption
	NFOption   *nfOption
}

func decodeRetryRuns(body []byte) (*retryRunsRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(codeInvalidParameter, "the request body is not valid UTF-8")
	}
	r := &retryRunsRequest{}
	var id *string
	err := decodeObject(body, "", retryRunsKeys, func(key string, v []byte) *apiError {
		var e *apiError
		switch key {
		case "ProjectId":
			r.ProjectId, e = jsonString(key, v)
		case "RunGroupId":
			id, e = jsonString(key, v)
		case "RunUuids":
			r.RunUuids, e = jsonStrings(key, v)
		case "WDLOption":
			r.WDLOption, e = decodeRunOption(key, v)
		case "NFOption":
			r.NFOption, e = decodeNFOption(v)
		}
		return e
	})
	if err != nil {
		return nil, err
	}
	if id == nil || *id == "" {
		return nil, errorf(codeMissingParameter, "RunGroupId: the parameter is required")
	}
	r.RunGroupId = *id
	blankIsAbsent(&r.ProjectId)
	r.WDLOption.blanksAreAbsent()
	r.NFOption.blanksAreAbsent()
	if e := r.WDLOption.validate("WDLOption"); e != nil {
		return nil, e
	}
	return r, nil
}

// retryRuns creates a new run group that re-executes runs of a terminal
// one. RetryRuns has no idempotency token, so commitFail can fail the
// answer after the group was created, as for RunApplication.
func (s *Server) retryRuns(c *call, body []byte, region string, commitFail CommitFailMode) {
	req, e := decodeRetryRuns(body)
	if e != nil {
		c.fail(e)
		return
	}
	project := deref(req.ProjectId, DefaultProjectID)
	if e := s.checkProject(project); e != nil {
		c.fail(e)
		return
	}
	id, e := s.store.retry(projectKey{region, project}, req, s.unavailableEnvironments(), s.now())
	if e != nil {
		c.fail(e)
		return
	}
	if commitFail != "" {
		s.commitThenFail(c, commitFail)
		return
	}
	c.respond(outcomeSuccess, runGroupIDAnswer{RunGroupId: id, RequestId: c.requestID})
}

// terminateRunGroupRequest is a TerminateRunGroup body.
type terminateRunGroupRequest struct {
	ProjectId  *string
	RunGroupId string
}

func decodeTerminateRunGroup(body []byte) (*terminateRunGroupRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(codeInvalidParameter, "the request body is not valid UTF-8")
	}
	r := &terminateRunGroupRequest{}
	var id *string
	err := decodeObject(body, "", terminateRunGroupKeys, func(key string, v []byte) *apiError {
		var e *apiError
		switch key {
		case "ProjectId":
			r.ProjectId, e = jsonString(key, v)
		case "RunGroupId":
			id, e = jsonString(key, v)
		}
		return e
	})
	if err != nil {
		return nil, err
	}
	if id == nil || *id == "" {
		return nil, errorf(codeMissingParameter, "RunGroupId: the parameter is required")
	}
	r.RunGroupId = *id
	blankIsAbsent(&r.ProjectId)
	return r, nil
}

// terminateRunGroup stops the runs of a group that have not ended. A
// commitFail fails the answer after they were stopped.
func (s *Server) terminateRunGroup(c *call, body []byte, region string, commitFail CommitFailMode) {
	req, e := decodeTerminateRunGroup(body)
	if e != nil {
		c.fail(e)
		return
	}
	project := deref(req.ProjectId, DefaultProjectID)
	if e := s.checkProject(project); e != nil {
		c.fail(e)
		return
	}
	if e := s.store.terminate(projectKey{region, project}, req.RunGroupId, s.now()); e != nil {
		c.fail(e)
		return
	}
	if commitFail != "" {
		s.commitThenFail(c, commitFail)
		return
	}
	c.respond(outcomeSuccess, requestIDAnswer{RequestId: c.requestID})
}

// unavailableEnvironments copies the environments SetEnvironmentAvailable
// took down, so the store can check them without taking s.mu.
func (s *Server) unavailableEnvironments() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.unavailable)
}

// runFilter is DescribeRuns' filters; all must match.
type runFilter []filterClause

func (f runFilter) matches(sg *storedGroup, r *storedRun, now time.Time) bool {
	for _, c := range f {
		var v string
		switch c.field {
		case "RunGroupId":
			v = sg.info.RunGroupId
		case "Status":
			v = sg.stateOf(r, now).status
		case "RunUuid":
			v = r.uuid
		case "ApplicationId":
			v = sg.info.ApplicationId
		case "UserDefinedId":
			v = "" // the sandbox has no table contents
		}
		if !slices.Contains(c.values, v) {
			return false
		}
	}
	return true
}

// groups returns the groups of pk whose runs f can match, in creation
// order: only those named by a RunGroupId filter if there is one, which
// spares a tracker's per-group polls a walk over the whole project.
func (f runFilter) groups(st *store, pk projectKey) []*storedGroup {
	i := slices.IndexFunc(f, func(c filterClause) bool { return c.field == "RunGroupId" })
	if i < 0 {
		return st.byProject[pk]
	}
	var out []*storedGroup
	for _, id := range f[i].values {
		sg, ok := st.byID[id]
		if ok && sg.region == pk.region && sg.info.ProjectId == pk.project && !slices.Contains(out, sg) {
			out = append(out, sg)
		}
	}
	slices.SortFunc(out, func(a, b *storedGroup) int { return a.seq - b.seq })
	return out
}

// describeRuns returns the number of runs of pk matching f whose groups are
// visible at now, and the page [offset, offset+limit) of them, in creation
// order (groups, then rows).
func (st *store) describeRuns(pk projectKey, f runFilter, offset, limit uint64, now time.Time) (uint64, []Run) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	page := make([]Run, 0, min(limit, maxDescribeLimit))
	var total uint64
	for _, sg := range f.groups(st, pk) {
		if !sg.visibleAt(now) {
			continue
		}
		for _, r := range sg.runs {
			if !f.matches(sg, r, now) {
				continue
			}
			if total >= offset && uint64(len(page)) < limit {
				page = append(page, sg.runSnapshot(r, now))
			}
			total++
		}
	}
	return total, page
}

// lookup returns group id if it lives in pk.
func (st *store) lookup(pk projectKey, id string) (*storedGroup, bool) {
	sg, ok := st.byID[id]
	if !ok || sg.region != pk.region || sg.info.ProjectId != pk.project {
		return nil, false
	}
	return sg, true
}

// retry checks a RetryRuns request against the source group and creates
// the new group, atomically. The checks run in the order docs/sandbox.md
// lists.
func (st *store) retry(pk projectKey, req *retryRunsRequest, down map[string]bool, now time.Time) (string, *apiError) {
	st.mu.Lock()
	defer st.mu.Unlock()
	src, ok := st.lookup(pk, req.RunGroupId)
	if !ok {
		return "", errorf(codeRunGroupNotExist, "the run group (RunGroupId) does not exist in the project")
	}
	picked, e := src.pickRetried(req.RunUuids, now)
	if e != nil {
		return "", e
	}
	if down[src.info.EnvironmentId] {
		return "", errorf(codeEnvironmentNotAvailable, "the environment of the run group is not available")
	}
	if src.generation >= st.exec.retryLimit() {
		return "", errorf(codeRetryLimitExceeded, "the run group was retried %d times in a row, the limit", src.generation)
	}
	ng := &storedGroup{
		region:          src.region,
		info:            src.info,
		created:         now,
		cacheClearDelay: src.cacheClearDelay,
		foldedName:      src.foldedName,
		retriedFrom:     src.info.RunGroupId,
		generation:      src.generation + 1,
	}
	ng.info.CreateTime = apiTime(now)
	if req.WDLOption != nil {
		ng.info.Option = req.WDLOption.toWire()
	}
	if req.NFOption != nil {
		ng.info.NFOption = req.NFOption.toWire()
	}
	rows := make([]string, len(picked))
	for i, r := range picked {
		rows[i] = r.tableRowUUID
	}
	// The retry keeps the source's Name but does not take it in byName:
	// the Name stays held by the group RunApplication created.
	st.insert(ng, rows, now)
	st.retries[src.info.RunGroupId] = append(st.retries[src.info.RunGroupId], ng.info.RunGroupId)
	return ng.info.RunGroupId, nil
}

// pickRetried returns the runs RetryRuns re-executes: those named (each
// once), or every run that did not succeed. The group must have ended and
// every picked run must have failed or been terminated.
func (sg *storedGroup) pickRetried(uuids []string, now time.Time) ([]*storedRun, *apiError) {
	var picked []*storedRun
	for _, u := range uuids {
		i := slices.IndexFunc(sg.runs, func(r *storedRun) bool { return r.uuid == u })
		if i < 0 {
			return nil, errorf(codeRunNotExist, "RunUuids: a run does not exist in the run group")
		}
		if !slices.Contains(picked, sg.runs[i]) {
			picked = append(picked, sg.runs[i])
		}
	}
	if !isTerminal(sg.summary(now).status) {
		return nil, errorf(codeStatusNotSupported, "the run group has not ended; only an ended group can be retried")
	}
	if len(uuids) == 0 {
		for _, r := range sg.runs {
			if isRetryable(sg.stateOf(r, now).status) {
				picked = append(picked, r)
			}
		}
		if len(picked) == 0 {
			return nil, errorf(codeStatusNotSupported, "the run group has no failed or terminated run to retry")
		}
		return picked, nil
	}
	for _, r := range picked {
		if !isRetryable(sg.stateOf(r, now).status) {
			return nil, errorf(codeStatusNotSupported, "RunUuids: only failed or terminated runs can be retried")
		}
	}
	return picked, nil
}

// terminate stops every run of group id (in pk) that has not ended.
func (st *store) terminate(pk projectKey, id string, now time.Time) *apiError {
	st.mu.Lock()
	defer st.mu.Unlock()
	sg, ok := st.lookup(pk, id)
	if !ok {
		// The code the SDK lists for TerminateRunGroup (omics-api.md §3.4).
		return errorf(codeRunNotExist, "the run group (RunGroupId) does not exist in the project")
	}
	if isTerminal(sg.summary(now).status) {
		return errorf(codeStatusNotSupported, "the run group has already ended")
	}
	for _, r := range sg.runs {
		if !isTerminal(r.baseState(sg.created, now).status) {
			r.terminatedAt = now
		}
	}
	sg.override = "" // a status set by SetRunGroupStatus gives way to the termination
	return nil
}

// retryStats returns the groups RetryRuns created, the number of distinct
// groups retried, and the most groups created from one of them.
func (st *store) retryStats() (created, sources, maxPerSource int) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	for _, ids := range st.retries {
		created += len(ids)
		maxPerSource = max(maxPerSource, len(ids))
	}
	return created, len(st.retries), maxPerSource
}

func (st *store) retriesCopy() map[string][]string {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make(map[string][]string, len(st.retries))
	for k, v := range st.retries {
		out[k] = slices.Clone(v)
	}
	return out
}
