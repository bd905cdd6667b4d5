package sandbox

import "encoding/json"

// The sandbox's wire types, written from omics-api.md (§1.2–1.4, §3.1,
// §3.2, §3.4) and never borrowed from the client under test: a shared type
// would let a client-side mistake in a field name or tag pass unnoticed.
// Go field names keep the API's spelling (RunGroupId, not RunGroupID)
// because they are the JSON keys. The types a Server inspection method
// returns are exported; the request and answer envelopes are not.

// DescribedRunGroup is a run group as DescribeRunGroups reports it
// (omics-api.md §3.1). The sandbox leaves ProjectName, ApplicationName,
// ApplicationType, ApplicationVersion, EnvironmentName, InputTemplateId,
// Volumes, Notification, Creator, CreatorId and ResultNotify empty: it
// models no projects, applications, volumes or users beyond their IDs.
type DescribedRunGroup struct {
	RunGroupId         string          `json:"RunGroupId"`
	ProjectId          string          `json:"ProjectId"`
	ProjectName        string          `json:"ProjectName"`
	ApplicationId      string          `json:"ApplicationId"`
	ApplicationName    string          `json:"ApplicationName"`
	ApplicationType    string          `json:"ApplicationType"`
	ApplicationVersion json.RawMessage `json:"ApplicationVersion,omitempty"`
	AccessMode         string          `json:"AccessMode"`
	EnvironmentId      string          `json:"EnvironmentId"`
	EnvironmentName    string          `json:"EnvironmentName"`
	// TableId is the batch table; empty for a singleton run.
	TableId     string `json:"TableId"`
	Name        string `json:"Name"`
	Description string `json:"Description"`
	// Status is derived from the runs' statuses; see docs/sandbox.md
	// ("Execution") for the values the sandbox uses.
	Status string `json:"Status"`
	// Type is WDL or NEXTFLOW.
	Type    string `json:"Type"`
	WorkDir string `json:"WorkDir"`
	Input   string `json:"Input"`
	// InputType is JSON or COS (the API also knows MANUAL).
	InputType       string          `json:"InputType"`
	InputCosUri     string          `json:"InputCosUri"`
	InputTemplateId string          `json:"InputTemplateId"`
	Option          *RunOption      `json:"Option,omitempty"`
	NFOption        *NFOption       `json:"NFOption,omitempty"`
	Volumes         json.RawMessage `json:"Volumes,omitempty"`
	TotalRun        uint64          `json:"TotalRun"`
	// RunStatusCounts counts the group's runs by status.
	RunStatusCounts []RunStatusCount `json:"RunStatusCounts,omitempty"`
	ExecutionTime   *ExecutionTime   `json:"ExecutionTime,omitempty"`
	// ErrorMessage explains a Failed group: the message of its first
	// failed run.
	ErrorMessage string          `json:"ErrorMessage"`
	Notification json.RawMessage `json:"Notification,omitempty"`
	// CreateTime and UpdateTime are RFC 3339 in +08:00, like the API's
	// examples.
	CreateTime   string `json:"CreateTime"`
	UpdateTime   string `json:"UpdateTime"`
	Creator      string `json:"Creator"`
	CreatorId    string `json:"CreatorId"`
	ResultNotify string `json:"ResultNotify"`
}

// RunOption is the WDL options object (omics-api.md §1.2): RunApplication's
// Option and RetryRuns' WDLOption.
type RunOption struct {
	FailureMode             *string `json:"FailureMode,omitempty"`
	UseCallCache            *bool   `json:"UseCallCache,omitempty"`
	UseErrorOnHold          *bool   `json:"UseErrorOnHold,omitempty"`
	FinalWorkflowOutputsDir *string `json:"FinalWorkflowOutputsDir,omitempty"`
	UseRelativeOutputPaths  *bool   `json:"UseRelativeOutputPaths,omitempty"`
	AddRunInfoToOutputDir   *bool   `json:"AddRunInfoToOutputDir,omitempty"`
}

// NFOption is the Nextflow options object (omics-api.md §1.3).
type NFOption struct {
	Config    *string `json:"Config,omitempty"`
	Profile   *string `json:"Profile,omitempty"`
	Report    *bool   `json:"Report,omitempty"`
	Resume    *bool   `json:"Resume,omitempty"`
	NFVersion *string `json:"NFVersion,omitempty"`
	LaunchDir *string `json:"LaunchDir,omitempty"`
}

// RunStatusCount is the number of a run group's runs in one status.
type RunStatusCount struct {
	Status string `json:"Status"`
	Count  uint64 `json:"Count"`
}

// ExecutionTime holds submit, start and end times as RFC 3339 text in
// +08:00; a time not reached yet is empty.
type ExecutionTime struct {
	SubmitTime string `json:"SubmitTime"`
	StartTime  string `json:"StartTime"`
	EndTime    string `json:"EndTime"`
}

// Run is one run of a run group as DescribeRuns reports it (omics-api.md
// §3.2): the only run of a singleton group, or one table row of a batch.
type Run struct {
	RunUuid       string `json:"RunUuid"`
	ProjectId     string `json:"ProjectId"`
	ApplicationId string `json:"ApplicationId"`
	RunGroupId    string `json:"RunGroupId"`
	EnvironmentId string `json:"EnvironmentId"`
	// UserDefinedId is the first column of a batch table's row; the
	// sandbox has no table contents, so it is always empty.
	UserDefinedId string `json:"UserDefinedId"`
	TableId       string `json:"TableId"`
	// TableRowUuid is the row this run executes; empty for a singleton
	// run and for a batch submitted without TableRowUuids.
	TableRowUuid string `json:"TableRowUuid"`
	Status       string `json:"Status"`
	Input        string `json:"Input"`
	// Option is deprecated in the API; the sandbox reports the group's.
	Option        *RunOption     `json:"Option,omitempty"`
	ExecutionTime *ExecutionTime `json:"ExecutionTime,omitempty"`
	Cache         *RunCache      `json:"Cache,omitempty"`
	ErrorMessage  string         `json:"ErrorMessage"`
	CreateTime    string         `json:"CreateTime"`
	UpdateTime    string         `json:"UpdateTime"`
}

// RunCache is a run's cache information (omics-api.md §3.2).
type RunCache struct {
	// CacheClearDelay is RunApplication's CacheClearDelay, in hours; 0
	// means never.
	CacheClearDelay uint64 `json:"CacheClearDelay"`
	// CacheClearTime is when the cache is cleared: CacheClearDelay hours
	// after the run ended; empty while it runs or when never.
	CacheClearTime string `json:"CacheClearTime"`
	CacheCleared   bool   `json:"CacheCleared"`
}

// runGroupIDAnswer is the answer of RunApplication and RetryRuns.
type runGroupIDAnswer struct {
	RunGroupId string `json:"RunGroupId"`
	RequestId  string `json:"RequestId"`
}

// requestIDAnswer is the answer of an action that returns nothing else
// (TerminateRunGroup).
type requestIDAnswer struct {
	RequestId string `json:"RequestId"`
}

// filter is one Filters element of the list actions.
type filter struct {
	Name   string   `json:"Name"`
	Values []string `json:"Values"`
}

// listRequest is the body of DescribeRunGroups and DescribeRuns, which
// share their parameters (omics-api.md §3.1, §3.2).
type listRequest struct {
	ProjectId *string  `json:"ProjectId"`
	Filters   []filter `json:"Filters"`
	Limit     *uint64  `json:"Limit"`
	Offset    *uint64  `json:"Offset"`
}

type describeRunGroupsAnswer struct {
	TotalCount uint64              `json:"TotalCount"`
	RunGroups  []DescribedRunGroup `json:"RunGroups"`
	RequestId  string              `json:"RequestId"`
}

type describeRunsAnswer struct {
	TotalCount uint64 `json:"TotalCount"`
	Runs       []Run  `json:"Runs"`
	RequestId  string `json:"RequestId"`
}
