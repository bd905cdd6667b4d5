package tracker

import (
	"slices"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
)

// Entry is the runs bucket's record of one request's run group (key
// client.KeyToken(Key)). It is written when the result is learnt and again
// after each event published, so a new leader knows what was published
// without reading the status stream.
type Entry struct {
	Key        string `json:"key"`
	RunGroupID string `json:"run_group_id"`
	// ProjectID is the group's project; "" is the region's default
	// project. Unresolved means the tracker could not tell which project
	// (see resolveProject); such a group is not polled.
	ProjectID  string `json:"project_id,omitempty"`
	Unresolved bool   `json:"project_unresolved,omitempty"`
	// SubmittedAt is the result's, RecordedAt when the tracker learnt it.
	SubmittedAt time.Time `json:"submitted_at"`
	RecordedAt  time.Time `json:"recorded_at"`
	// Status, Counts and TotalRun are the group as last written.
	Status   string               `json:"status,omitempty"`
	Counts   []client.StatusCount `json:"counts,omitempty"`
	TotalRun uint64               `json:"total_run,omitempty"`
	// Batch is a table batch (TableId set, or several runs): its runs get
	// events of their own.
	Batch bool `json:"batch,omitempty"`
	// Group is what was published on the group subject; Runs, per RunUuid,
	// on each run's subject.
	Group Emitted              `json:"group"`
	Runs  map[string]RunRecord `json:"runs,omitempty"`
	// Terminal mirrors Group.Terminal: the final group event is published
	// and the entry is done.
	Terminal  bool      `json:"terminal"`
	UpdatedAt time.Time `json:"updated_at"`
	// RetryOf is the run group RunGroupID re-executes (see retry.go).
	RetryOf string `json:"retry_of,omitempty"`
	// BatchID is the request's batch (client.HeaderBatch of its result);
	// MemberStatus the group status last written into its member record.
	// The entry is terminal only once the member has its terminal status.
	BatchID      string `json:"batch_id,omitempty"`
	MemberStatus string `json:"member_status,omitempty"`
}

// Emitted records what was published on one subject: the statuses (lower
// case, the form client.StatusMsgID uses), the stream sequence of the last
// event (the subject's expected last sequence for the next one), and
// whether the terminal event is among them.
type Emitted struct {
	Statuses []string `json:"statuses,omitempty"`
	Seq      uint64   `json:"seq,omitempty"`
	Terminal bool     `json:"terminal,omitempty"`
}

// RunRecord is one run of a batch.
type RunRecord struct {
	TableRowUUID string `json:"table_row_uuid,omitempty"`
	Status       string `json:"status,omitempty"`
	Emitted
}

// has reports whether status (any case) was published.
func (m *Emitted) has(status string) bool {
	return slices.Contains(m.Statuses, strings.ToLower(status))
}

// add records an event published at seq.
func (m *Emitted) add(status string, seq uint64, terminal bool) {
	if s := strings.ToLower(status); !slices.Contains(m.Statuses, s) {
		m.Statuses = append(m.Statuses, s)
	}
	m.Seq = max(m.Seq, seq)
	m.Terminal = m.Terminal || terminal
}

// merge adds what the subject's history shows; the history is the truth
// for the sequence, since a write of this record may have been lost.
func (m *Emitted) merge(h Emitted) {
	for _, s := range h.Statuses {
		m.add(s, 0, false)
	}
	m.Seq = h.Seq
	m.Terminal = m.Terminal || h.Terminal
}

func (m Emitted) clone() Emitted {
	m.Statuses = slices.Clone(m.Statuses)
	return m
}

// clone returns a deep copy, so a snapshot can be changed without touching
// the shared state.
func (e Entry) clone() Entry {
	e.Counts = slices.Clone(e.Counts)
	e.Group = e.Group.clone()
	if e.Runs != nil {
		runs := make(map[string]RunRecord, len(e.Runs))
		for id, r := range e.Runs {
			r.Emitted = r.Emitted.clone()
			runs[id] = r
		}
		e.Runs = runs
	}
	return e
}

// knownStatuses are the statuses the tracker knows (compared
// case-insensitively). The API enumerates none (omics-api.md §3.1): these are
// the title-case ones a third-party document and the sandbox use. Anything
// else is not terminal and counted.
var knownStatuses = []string{"Pending", "Running", "Succeeded", "Failed", "Terminated"}

func isKnownStatus(s string) bool {
	return slices.ContainsFunc(knownStatuses, func(k string) bool { return strings.EqualFold(k, s) })
}

// countsOf converts a group's RunStatusCounts.
func countsOf(in []submit.RunStatusCount) []client.StatusCount {
	if len(in) == 0 {
		return nil
	}
	out := make([]client.StatusCount, len(in))
	for i, c := range in {
		out[i] = client.StatusCount{Status: c.Status, Count: c.Count}
	}
	return out
}

// observe takes the group's current status into e and reports whether
// anything the entry keeps changed.
func (e *Entry) observe(g *submit.RunGroup) bool {
	counts := countsOf(g.RunStatusCounts)
	batch := e.Batch || g.TableId != "" || g.TotalRun > 1
	changed := e.Status != g.Status || e.TotalRun != g.TotalRun || e.Batch != batch || !slices.Equal(e.Counts, counts)
	e.Status, e.Counts, e.TotalRun, e.Batch = g.Status, counts, g.TotalRun, batch
	return changed
}

// needsRuns reports whether a batch's runs must be listed this cycle: its
// counts or status changed since the entry was written, or it ended and
// its final listing (which must precede the final group event) is due.
func needsRuns(e Entry, g *submit.RunGroup) bool {
	if !(e.Batch || g.TableId != "" || g.TotalRun > 1) || e.Group.Terminal {
		return false
	}
	return e.Status != g.Status || !slices.Equal(e.Counts, countsOf(g.RunStatusCounts)) ||
		client.IsTerminalStatus(g.Status) || !e.Group.has(g.Status)
}

// parseTime reads an API time (RFC 3339 text, often +08:00) as UTC; empty
// or unreadable text is no time.
func parseTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil
	}
	t = t.UTC()
	return &t
}

func timesOf(x *submit.ExecutionTime) (submit, start, end *time.Time) {
	if x == nil {
		return nil, nil, nil
	}
	return parseTime(x.SubmitTime), parseTime(x.StartTime), parseTime(x.EndTime)
}

// groupEvent is the event of the group's current status.
func groupEvent(e *Entry, g *submit.RunGroup, now time.Time) client.StatusEvent {
	ev := client.StatusEvent{
		Key: e.Key, RunGroupID: e.RunGroupID, Status: g.Status, Terminal: client.IsTerminalStatus(g.Status),
		Counts: slices.Clone(e.Counts), ErrorMessage: g.ErrorMessage, RetryOf: e.RetryOf, ObservedAt: now.UTC(),
	}
	ev.SubmitTime, ev.StartTime, ev.EndTime = timesOf(g.ExecutionTime)
	return ev
}

// runEvent is the event of one batch run's current status.
func runEvent(e *Entry, r *submit.Run, now time.Time) client.StatusEvent {
	ev := client.StatusEvent{
		Key: e.Key, RunGroupID: e.RunGroupID, RunUUID: r.RunUuid, TableRowUUID: r.TableRowUuid, Status: r.Status,
		Terminal: client.IsTerminalStatus(r.Status), ErrorMessage: r.ErrorMessage, RetryOf: e.RetryOf, ObservedAt: now.UTC(),
	}
	ev.SubmitTime, ev.StartTime, ev.EndTime = timesOf(r.ExecutionTime)
	return ev
}

// sinceSubmit is how long the group took from submission to ev's terminal
// status: the API's own times when it gives both, else the result's
// submission time to the observation.
func sinceSubmit(e *Entry, ev client.StatusEvent) time.Duration {
	if ev.SubmitTime != nil && ev.EndTime != nil {
		return ev.EndTime.Sub(*ev.SubmitTime)
	}
	return ev.ObservedAt.Sub(e.SubmittedAt)
}
