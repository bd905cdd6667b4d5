package client

import (
	"strings"
	"time"
)

// StatusEvent is published to the status stream once per change of status
// of a run group omicsq created (subject <status prefix>.<key token>.group),
// and of each run of a table batch (<status prefix>.<key token>.run.<run
// token>). At most one event is published per (key, run group, run, status),
// through tracker fail-over and restarts; the event whose Terminal is true
// is the last one for its group or run.
type StatusEvent struct {
	Key        string `json:"key"`
	RunGroupID string `json:"run_group_id"`
	// RunUUID and TableRowUUID are set on the event of one run of a batch.
	RunUUID      string `json:"run_uuid,omitempty"`
	TableRowUUID string `json:"table_row_uuid,omitempty"`
	// Status is the API's status string as reported (the API does not
	// enumerate them; see IsTerminalStatus).
	Status   string `json:"status"`
	Terminal bool   `json:"terminal"`
	// Counts are the group's RunStatusCounts (group events only).
	Counts       []StatusCount `json:"counts,omitempty"`
	SubmitTime   *time.Time    `json:"submit_time,omitempty"`
	StartTime    *time.Time    `json:"start_time,omitempty"`
	EndTime      *time.Time    `json:"end_time,omitempty"`
	ErrorMessage string        `json:"error_message,omitempty"`
	// RetryOf is the run group this one re-executes (RetryRuns, see
	// "Retrying failed runs" in docs/lifecycle.md); empty for the request's
	// first run group. A key's group subject then carries the events of
	// each of its groups in turn.
	RetryOf string `json:"retry_of,omitempty"`
	// ObservedAt is when the tracker saw the status.
	ObservedAt time.Time `json:"observed_at"`
}

// StatusCount is one entry of a group's RunStatusCounts.
type StatusCount struct {
	Status string `json:"status"`
	Count  uint64 `json:"count"`
}

// Terminal statuses, compared case-insensitively. The API does not
// enumerate statuses; these are the ones documented elsewhere (Succeeded,
// Failed) and the result of TerminateRunGroup. Any other status is treated
// as not terminal.
var terminalStatuses = []string{"Succeeded", "Failed", "Terminated"}

// IsTerminalStatus reports whether status is final.
func IsTerminalStatus(status string) bool {
	for _, t := range terminalStatuses {
		if strings.EqualFold(status, t) {
			return true
		}
	}
	return false
}

// IsFailedStatus reports whether a terminal status means the work did not
// succeed.
func IsFailedStatus(status string) bool {
	return IsTerminalStatus(status) && !strings.EqualFold(status, "Succeeded")
}

// StatusGroupSubject is the subject of key's run-group status events.
func (t Topology) StatusGroupSubject(key string) string {
	return t.StatusPrefix + "." + KeyToken(key) + ".group"
}

// StatusRunSubject is the subject of the status events of one run of key's
// batch.
func (t Topology) StatusRunSubject(key, runUUID string) string {
	return t.StatusPrefix + "." + KeyToken(key) + ".run." + KeyToken(runUUID)
}

// StatusMsgID is the de-duplication ID of a status event: one per key, run
// group, run ("" for the group) and status.
func StatusMsgID(e StatusEvent) string {
	return "status/" + KeyToken(e.Key) + "/" + e.RunGroupID + "/" + e.RunUUID + "/" + strings.ToLower(e.Status)
}
