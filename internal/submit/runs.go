package submit

import "context"

// The run-level actions of omics-api.md §3.2 and §3.4: DescribeRuns lists
// the runs of run groups (one per table row of a batch, or the single run of
// a singleton), RetryRuns re-executes ended runs as a new run group, and
// TerminateRunGroup stops a group's runs. Like RunApplication and
// DescribeRunGroups they go through Client.call, so their errors are
// classified once, in errors.go.

// DescribeRunsRequest is the body of the DescribeRuns action. It shares
// DescribeRunGroups' parameters; the documented filter names are
// RunGroupId, Status, RunUuid, ApplicationId and UserDefinedId.
type DescribeRunsRequest struct {
	// ProjectId is the project; nil means the region's default project.
	ProjectId *string `json:"ProjectId,omitempty"`
	// Filters narrow the result; all must match, a filter matches if any
	// of its values does.
	Filters []Filter `json:"Filters,omitempty"`
	// Limit is the page size: default 10, at most 100.
	Limit *uint64 `json:"Limit,omitempty"`
	// Offset is the number of runs to skip; default 0.
	Offset *uint64 `json:"Offset,omitempty"`
}

// DescribeRunsResponse is the successful answer of DescribeRuns.
type DescribeRunsResponse struct {
	// TotalCount is the number of runs matching the filters, over all pages.
	TotalCount uint64 `json:"TotalCount"`
	// Runs is this page of runs.
	Runs []Run `json:"Runs"`
	// RequestId is the server's id of the call.
	RequestId string `json:"RequestId"`
}

// Run is one run ("任务") as DescribeRuns reports it: a table row of a
// batch, or the only run of a singleton run group. Unknown fields are
// ignored on decoding.
type Run struct {
	// RunUuid identifies the run.
	RunUuid string `json:"RunUuid"`
	// ProjectId, ApplicationId, RunGroupId and EnvironmentId are its
	// group's.
	ProjectId     string `json:"ProjectId"`
	ApplicationId string `json:"ApplicationId"`
	RunGroupId    string `json:"RunGroupId"`
	EnvironmentId string `json:"EnvironmentId"`
	// UserDefinedId is the first column of the batch table's row.
	UserDefinedId string `json:"UserDefinedId"`
	// TableId and TableRowUuid name the batch row the run executes; empty
	// for a singleton.
	TableId      string `json:"TableId"`
	TableRowUuid string `json:"TableRowUuid"`
	// Status is not enumerated by the API docs; compare case-insensitively
	// and treat unknown values as not terminal.
	Status string `json:"Status"`
	// Input is the run's input JSON as the server stores it.
	Input string `json:"Input"`
	// Option is deprecated in the API.
	Option *RunOption `json:"Option,omitempty"`
	// ExecutionTime holds the run's submit, start and end times.
	ExecutionTime *ExecutionTime `json:"ExecutionTime,omitempty"`
	// Cache is the run's cache information.
	Cache *RunCache `json:"Cache,omitempty"`
	// ErrorMessage explains a failed run. It may quote inputs: never log it.
	ErrorMessage string `json:"ErrorMessage"`
	// CreateTime and UpdateTime are RFC 3339 text as the server sends it.
	CreateTime string `json:"CreateTime"`
	UpdateTime string `json:"UpdateTime"`
}

// RunCache is a run's cache information.
type RunCache struct {
	// CacheClearDelay is RunApplication's CacheClearDelay, in hours.
	CacheClearDelay uint64 `json:"CacheClearDelay"`
	// CacheClearTime is when the cache is (or was) cleared, RFC 3339 text.
	CacheClearTime string `json:"CacheClearTime"`
	// CacheCleared reports that the cache is gone.
	CacheCleared bool `json:"CacheCleared"`
}

// RetryRunsRequest is the body of the RetryRuns action.
type RetryRunsRequest struct {
	// ProjectId is the project; nil means the region's default project.
	ProjectId *string `json:"ProjectId,omitempty"`
	// RunGroupId is the run group whose runs are retried (required).
	RunGroupId string `json:"RunGroupId"`
	// RunUuids selects the runs to retry; nil means every failed or
	// terminated run of the group.
	RunUuids []string `json:"RunUuids,omitempty"`
	// WDLOption and NFOption replace the group's options; nil keeps them.
	WDLOption *RunOption `json:"WDLOption,omitempty"`
	NFOption  *NFOption  `json:"NFOption,omitempty"`
}

// RetryRunsResponse is the successful answer of RetryRuns.
type RetryRunsResponse struct {
	// RunGroupId is the new run group that re-executes the runs.
	RunGroupId string `json:"RunGroupId"`
	// RequestId is the server's id of the call.
	RequestId string `json:"RequestId"`
}

// TerminateRunGroupRequest is the body of the TerminateRunGroup action.
type TerminateRunGroupRequest struct {
	// ProjectId is the project; nil means the region's default project.
	ProjectId *string `json:"ProjectId,omitempty"`
	// RunGroupId is the run group to stop (required).
	RunGroupId string `json:"RunGroupId"`
}

// TerminateRunGroupResponse is the successful answer of TerminateRunGroup.
type TerminateRunGroupResponse struct {
	// RequestId is the server's id of the call.
	RequestId string `json:"RequestId"`
}

// DescribeRuns lists runs (one page). A nil req lists with the API's
// defaults. Every error is an *Error.
func (c *Client) DescribeRuns(ctx context.Context, req *DescribeRunsRequest) (*DescribeRunsResponse, error) {
	if req == nil {
		req = &DescribeRunsRequest{}
	}
	var out DescribeRunsResponse
	if err := c.call(ctx, "DescribeRuns", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RetryRuns re-executes ended runs of req.RunGroupId as a new run group and
// returns its RunGroupId. Every error is an *Error.
//
// RetryRuns has no idempotency token: every successful call creates a
// group, so after a ClassAmbiguous error the new group may exist. Find it
// (DescribeRunGroups) before calling again.
func (c *Client) RetryRuns(ctx context.Context, req *RetryRunsRequest) (*RetryRunsResponse, error) {
	const action = "RetryRuns"
	if req == nil || req.RunGroupId == "" {
		return nil, &Error{Action: action, Class: ClassPermanent, Code: codeClientInvalidParam, Message: "RunGroupId is required"}
	}
	var out RetryRunsResponse
	if err := c.call(ctx, action, req, &out); err != nil {
		return nil, err
	}
	if out.RunGroupId == "" {
		return nil, &Error{Action: action, Class: ClassAmbiguous, Code: CodeInvalidResponse,
			Message: "success response without RunGroupId", RequestID: out.RequestId}
	}
	return &out, nil
}

// TerminateRunGroup stops the runs of req.RunGroupId that have not ended.
// Every error is an *Error. Terminating is idempotent in effect, but the
// answer for a group that already ended is not documented: a sandbox answers
// FailedOperation.StatusNotSupported (ClassPermanent).
func (c *Client) TerminateRunGroup(ctx context.Context, req *TerminateRunGroupRequest) (*TerminateRunGroupResponse, error) {
	const action = "TerminateRunGroup"
	if req == nil || req.RunGroupId == "" {
		return nil, &Error{Action: action, Class: ClassPermanent, Code: codeClientInvalidParam, Message: "RunGroupId is required"}
	}
	var out TerminateRunGroupResponse
	if err := c.call(ctx, action, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
