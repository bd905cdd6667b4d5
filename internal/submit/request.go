package submit

import "encoding/json"

// Go field names below deliberately keep the API's spelling (ApplicationId,
// not ApplicationID): they are the JSON keys, and keeping one spelling makes
// every field greppable across the API docs, the SDK and this package.

// RunApplicationRequest is the body of the RunApplication action (Tencent
// Cloud Omics 2022-11-28). Optional fields are pointers or slices tagged
// omitempty, so an absent field is never sent as a zero value while an
// explicit false or 0 (for example CacheClearDelay: 0) is sent as given.
type RunApplicationRequest struct {
	// ApplicationId is the application to run (required).
	ApplicationId string `json:"ApplicationId"`
	// Name is the run-group name (required). The API rejects a name that
	// already exists with InvalidParameterValue.DuplicateName, which makes
	// Name the only idempotency guard RunApplication has.
	Name string `json:"Name"`
	// EnvironmentId is the delivery environment (required).
	EnvironmentId string `json:"EnvironmentId"`
	// ProjectId is the project; nil means the region's default project.
	ProjectId *string `json:"ProjectId,omitempty"`
	// Description describes the run group.
	Description *string `json:"Description,omitempty"`
	// InputCosUri is the COS URI of the input JSON. Exactly one of
	// InputCosUri and InputBase64 must be set.
	InputCosUri *string `json:"InputCosUri,omitempty"`
	// InputBase64 is the input JSON, standard base64 encoded.
	InputBase64 *string `json:"InputBase64,omitempty"`
	// TableId is the batch table; nil runs a single ("singleton") run.
	TableId *string `json:"TableId,omitempty"`
	// TableRowUuids selects rows of TableId; nil means every row.
	TableRowUuids []string `json:"TableRowUuids,omitempty"`
	// CacheClearDelay is the number of hours before the run cache is cleared;
	// 0 or nil means never.
	CacheClearDelay *uint64 `json:"CacheClearDelay,omitempty"`
	// ApplicationVersionId pins an application version; nil means latest.
	ApplicationVersionId *string `json:"ApplicationVersionId,omitempty"`
	// Option holds the WDL run options.
	Option *RunOption `json:"Option,omitempty"`
	// NFOption holds the Nextflow run options.
	NFOption *NFOption `json:"NFOption,omitempty"`
	// WorkDir is the Nextflow working directory: an absolute path in a
	// volume, or a COS path (which then requires NFOption.LaunchDir).
	WorkDir *string `json:"WorkDir,omitempty"`
	// AccessMode is PRIVATE (the API's default) or PUBLIC.
	AccessMode *string `json:"AccessMode,omitempty"`
	// VolumeIds are the cache volumes (Nextflow); nil means the default volume.
	VolumeIds []string `json:"VolumeIds,omitempty"`
	// ResultNotification enables the result notification e-mail.
	ResultNotification *bool `json:"ResultNotification,omitempty"`
	// TimeoutNotification enables the timeout notification e-mail.
	TimeoutNotification *bool `json:"TimeoutNotification,omitempty"`
	// TimeoutNotificationMinutes is the timeout threshold, 5 to 2880 minutes.
	TimeoutNotificationMinutes *uint64 `json:"TimeoutNotificationMinutes,omitempty"`
	// EmailForNotification lists the notification e-mail addresses.
	EmailForNotification []string `json:"EmailForNotification,omitempty"`
}

// RunOption holds the WDL run options of RunApplication (and the WDLOption
// of RetryRuns).
type RunOption struct {
	// FailureMode is ContinueWhilePossible or NoNewCalls.
	FailureMode *string `json:"FailureMode,omitempty"`
	// UseCallCache enables call caching.
	UseCallCache *bool `json:"UseCallCache,omitempty"`
	// UseErrorOnHold holds the run on error instead of failing it.
	UseErrorOnHold *bool `json:"UseErrorOnHold,omitempty"`
	// FinalWorkflowOutputsDir is the COS path that receives archived outputs.
	FinalWorkflowOutputsDir *string `json:"FinalWorkflowOutputsDir,omitempty"`
	// UseRelativeOutputPaths archives outputs under relative directories.
	UseRelativeOutputPaths *bool `json:"UseRelativeOutputPaths,omitempty"`
	// AddRunInfoToOutputDir adds run information to the output directory.
	AddRunInfoToOutputDir *bool `json:"AddRunInfoToOutputDir,omitempty"`
}

// NFOption holds the Nextflow run options of RunApplication.
type NFOption struct {
	// Config is Nextflow configuration text; it may span several lines.
	Config *string `json:"Config,omitempty"`
	// Profile selects Nextflow profiles.
	Profile *string `json:"Profile,omitempty"`
	// Report asks for the Nextflow execution report files.
	Report *bool `json:"Report,omitempty"`
	// Resume resumes from cached work.
	Resume *bool `json:"Resume,omitempty"`
	// NFVersion is the Nextflow version, for example 22.10.7 or 23.10.1.
	NFVersion *string `json:"NFVersion,omitempty"`
	// LaunchDir is the absolute volume path where nextflow run executes;
	// required when WorkDir is a COS path.
	LaunchDir *string `json:"LaunchDir,omitempty"`
}

// RunApplicationResponse is the successful answer of RunApplication.
type RunApplicationResponse struct {
	// RunGroupId is the new run group.
	RunGroupId string `json:"RunGroupId"`
	// RequestId is the server's id of the call, for support tickets.
	RequestId string `json:"RequestId"`
}

// Filter is one DescribeRunGroups filter: the run groups whose field Name
// matches any of Values. Documented names: Name, RunGroupId, Status,
// ApplicationId, Type.
type Filter struct {
	// Name is the field to filter on.
	Name string `json:"Name"`
	// Values are the accepted values.
	Values []string `json:"Values"`
}

// DescribeRunGroupsRequest is the body of the DescribeRunGroups action.
type DescribeRunGroupsRequest struct {
	// ProjectId is the project; nil means the region's default project.
	// Always pass the ProjectId the RunApplication call used.
	ProjectId *string `json:"ProjectId,omitempty"`
	// Filters narrow the result; all must match.
	Filters []Filter `json:"Filters,omitempty"`
	// Limit is the page size: default 10, at most 100.
	Limit *uint64 `json:"Limit,omitempty"`
	// Offset is the number of run groups to skip; default 0.
	Offset *uint64 `json:"Offset,omitempty"`
}

// DescribeRunGroupsResponse is the successful answer of DescribeRunGroups.
type DescribeRunGroupsResponse struct {
	// TotalCount is the number of run groups matching the filters, over
	// all pages.
	TotalCount uint64 `json:"TotalCount"`
	// RunGroups is this page of run groups.
	RunGroups []RunGroup `json:"RunGroups"`
	// RequestId is the server's id of the call.
	RequestId string `json:"RequestId"`
}

// RunGroup is a run group ("任务批次") as DescribeRunGroups reports it.
// Decoding ignores fields not listed here, so a newer API version that adds
// fields does not break the client. Nested objects whose shape this worker
// does not use are kept raw.
type RunGroup struct {
	// RunGroupId identifies the run group.
	RunGroupId string `json:"RunGroupId"`
	// ProjectId and ProjectName identify its project.
	ProjectId   string `json:"ProjectId"`
	ProjectName string `json:"ProjectName"`
	// ApplicationId, ApplicationName, ApplicationType and
	// ApplicationVersion (kept raw) describe the application it runs.
	ApplicationId      string          `json:"ApplicationId"`
	ApplicationName    string          `json:"ApplicationName"`
	ApplicationType    string          `json:"ApplicationType"`
	ApplicationVersion json.RawMessage `json:"ApplicationVersion,omitempty"`
	// AccessMode is PRIVATE or PUBLIC.
	AccessMode string `json:"AccessMode"`
	// EnvironmentId and EnvironmentName identify the delivery environment.
	EnvironmentId   string `json:"EnvironmentId"`
	EnvironmentName string `json:"EnvironmentName"`
	// TableId is the batch table; empty for a single run.
	TableId string `json:"TableId"`
	// Name is the run-group name given to RunApplication.
	Name string `json:"Name"`
	// Description is the run-group description.
	Description string `json:"Description"`
	// Status is not enumerated by the API docs; compare case-insensitively
	// and treat unknown values as not terminal.
	Status string `json:"Status"`
	// Type is WDL or NEXTFLOW.
	Type string `json:"Type"`
	// WorkDir is the Nextflow working directory.
	WorkDir string `json:"WorkDir"`
	// Input is the input JSON as the server stores it.
	Input string `json:"Input"`
	// InputType is JSON, MANUAL or COS.
	InputType string `json:"InputType"`
	// InputCosUri is the COS URI of the input, for InputType COS.
	InputCosUri string `json:"InputCosUri"`
	// InputTemplateId is the input template used, if any.
	InputTemplateId string `json:"InputTemplateId"`
	// Option and NFOption are the run options given to RunApplication.
	Option   *RunOption `json:"Option,omitempty"`
	NFOption *NFOption  `json:"NFOption,omitempty"`
	// Volumes (kept raw) are the cache volumes used.
	Volumes json.RawMessage `json:"Volumes,omitempty"`
	// TotalRun is the number of runs in the group.
	TotalRun uint64 `json:"TotalRun"`
	// RunStatusCounts counts the group's runs by status.
	RunStatusCounts []RunStatusCount `json:"RunStatusCounts,omitempty"`
	// ExecutionTime holds the submit, start and end times.
	ExecutionTime *ExecutionTime `json:"ExecutionTime,omitempty"`
	// ErrorMessage explains a failed group.
	ErrorMessage string `json:"ErrorMessage"`
	// Notification (kept raw) is the notification setting.
	Notification json.RawMessage `json:"Notification,omitempty"`
	// CreateTime and UpdateTime are RFC 3339 text as the server sends it.
	CreateTime string `json:"CreateTime"`
	UpdateTime string `json:"UpdateTime"`
	// Creator and CreatorId identify who submitted the group.
	Creator   string `json:"Creator"`
	CreatorId string `json:"CreatorId"`
}

// RunStatusCount is the number of runs of a run group in one status.
type RunStatusCount struct {
	// Status is a run status.
	Status string `json:"Status"`
	// Count is the number of runs in Status.
	Count uint64 `json:"Count"`
}

// ExecutionTime holds a run group's submit, start and end times as RFC 3339
// text; empty when not reached yet.
type ExecutionTime struct {
	// SubmitTime is when the group was submitted.
	SubmitTime string `json:"SubmitTime"`
	// StartTime is when its first run started.
	StartTime string `json:"StartTime"`
	// EndTime is when its last run ended.
	EndTime string `json:"EndTime"`
}
