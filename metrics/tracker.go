package metrics

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omicsq/omicsq/internal/submit"
)

// The run tracker's series (internal/tracker): the run groups it follows by
// status, how far behind its polling is, the Describe budget it spends,
// the lifecycle events it publishes and whether it runs at all.

// Status label values of omicsq_tracker_run_groups beyond the API's
// statuses (lower-cased): TrackerUnseen is a run group recorded but not yet
// reported by DescribeRunGroups (visibility lag, or not polled yet since a
// fail-over); TrackerUnresolved is one whose project the tracker could not
// determine, so it cannot be polled (see docs/lifecycle.md).
const (
	TrackerUnseen     = "unseen"
	TrackerUnresolved = "unresolved"
)

// Event kinds (label kind of omicsq_tracker_events_total).
const (
	TrackerEventGroup = "group"
	TrackerEventRun   = "run"
	// TrackerEventBatch is a batch's completion event (client.BatchCompleted).
	TrackerEventBatch = "batch"
)

var (
	// trackerStatuses are the statuses the API is known to report (the API
	// enumerates none; docs/lifecycle.md), lower-cased, plus the tracker's
	// own two states.
	trackerStatuses = []string{"pending", "running", "succeeded", "failed", "terminated", TrackerUnseen, TrackerUnresolved}
	// trackerTerminal are the terminal statuses (client.IsTerminalStatus).
	trackerTerminal = []string{"succeeded", "failed", "terminated"}
	trackerActions  = []string{ActionDescribeRunGroups, ActionDescribeRuns}
	trackerKinds    = []string{TrackerEventGroup, TrackerEventRun, TrackerEventBatch}

	// A poll cycle: milliseconds for a few groups, tens of seconds for
	// thousands at a small share of the Describe budget.
	trackerCycleBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	// Submit to terminal: seconds in a sandbox, hours to days for real
	// sequencing workflows.
	trackerRunBuckets = []float64{1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800}
)

// trackerSeries are the run tracker's series, part of Metrics.
type trackerSeries struct {
	enabled, leader, lag, budget prometheus.Gauge
	cycles, unknown, errors      prometheus.Counter
	cycleDuration                prometheus.Histogram
	runGroups                    series[prometheus.Gauge]
	calls                        map[labelPair]prometheus.Counter // by action, class
	cycleCallsGauge              series[prometheus.Gauge]
	terminal                     series[prometheus.Observer]
	events                       series[prometheus.Counter]
	terminates                   series[prometheus.Counter]
	actions                      set
}

func newTrackerSeries(add func(prometheus.Collector)) trackerSeries {
	s := trackerSeries{actions: newSet(trackerActions)}
	s.enabled = newGauge(add, "omicsq_tracker_enabled",
		"1 if this worker runs the run tracker (--tracker), else 0.")
	s.leader = newGauge(add, "omicsq_tracker_leader",
		"1 while this worker holds the run tracker's leadership (it alone polls and publishes events), else 0.")
	s.budget = newGauge(add, "omicsq_tracker_budget_requests_per_second",
		"Describe calls per second per action the run tracker may spend (its share of the API rate); 0 means unlimited.")
	s.cycles = newCounter(add, "omicsq_tracker_cycles_total",
		"Poll cycles the run tracker completed on this worker.")
	s.cycleDuration = newHistogram(add, "omicsq_tracker_cycle_duration_seconds",
		"Duration of one poll cycle of the run tracker, budget waits included.", trackerCycleBuckets)
	s.cycleCallsGauge = newGauges(add, "omicsq_tracker_cycle_describe_calls",
		"Describe calls the run tracker's last completed poll cycle made, by action.", "action", trackerActions)
	s.calls = newPairCounters(add, "omicsq_tracker_describe_calls_total",
		"Describe calls the run tracker made (its part of the Describe budget), by action and result class.",
		"action", withOther(trackerActions), "class", withOther(apiClasses))
	s.lag = newGauge(add, "omicsq_tracker_lag_seconds",
		"Seconds since the run tracker last saw the status of the active run group it saw longest ago; 0 with none active.")
	s.runGroups = newGauges(add, "omicsq_tracker_run_groups",
		"Run groups the run tracker follows (not yet ended, or ended with the final event pending), by last status seen.",
		"status", trackerStatuses)
	s.terminal = newHistograms(add, "omicsq_tracker_submit_to_terminal_seconds",
		"Time from a run group's submission to its terminal status, by that status.", trackerRunBuckets, "status", trackerTerminal)
	s.events = newCounters(add, "omicsq_tracker_events_total",
		"Lifecycle events published to the status stream, by kind (group, batch run, or a batch's completion).", "kind", trackerKinds)
	s.terminates = newCounters(add, "omicsq_tracker_terminate_calls_total",
		"TerminateRunGroup calls the run tracker made for the running groups of cancelled batches, by result class.", "class", apiClasses)
	s.unknown = newCounter(add, "omicsq_tracker_unknown_statuses_total",
		"Status changes to a status string the tracker does not know (treated as not terminal).")
	s.errors = newCounter(add, "omicsq_tracker_errors_total",
		"Failed reads or writes of the run tracker (runs bucket, status stream, results consumer, Describe calls).")
	return s
}

// SetTrackerEnabled records whether this worker runs the run tracker.
func (m *Metrics) SetTrackerEnabled(on bool) { m.tracker.enabled.Set(boolFloat(on)) }

// SetTrackerLeader records whether this worker leads the run tracker.
func (m *Metrics) SetTrackerLeader(leader bool) { m.tracker.leader.Set(boolFloat(leader)) }

// SetTrackerBudget records the tracker's Describe rate per action (0:
// unlimited).
func (m *Metrics) SetTrackerBudget(perSecond float64) { m.tracker.budget.Set(perSecond) }

// TrackerDescribeCall records one Describe call of the tracker: action
// (ActionDescribeRunGroups or ActionDescribeRuns) and the failure's class,
// 0 for a success. Its DescribeRunGroups calls are also counted in the
// omicsq_api_* series (APICallSucceeded, APICallFailed); DescribeRuns only
// here.
func (m *Metrics) TrackerDescribeCall(action string, class submit.Class) {
	label := classSuccess
	if class != 0 {
		label = m.classes.norm(class.String())
	}
	m.tracker.calls[labelPair{m.tracker.actions.norm(action), label}].Inc()
}

// TrackerCycle records a completed poll cycle: its duration and the
// Describe calls it made per action.
func (m *Metrics) TrackerCycle(d time.Duration, groupCalls, runCalls int) {
	m.tracker.cycles.Inc()
	m.tracker.cycleDuration.Observe(seconds(d))
	m.tracker.cycleCallsGauge.get(ActionDescribeRunGroups).Set(float64(groupCalls))
	m.tracker.cycleCallsGauge.get(ActionDescribeRuns).Set(float64(runCalls))
}

// SetTrackerLag records how long ago the stalest active run group was seen.
func (m *Metrics) SetTrackerLag(d time.Duration) { m.tracker.lag.Set(seconds(d)) }

// SetTrackerRunGroups replaces the run-group gauge: byStatus maps a status
// (any case; TrackerUnseen and TrackerUnresolved too) to a count; statuses
// outside the known set add up under "other", and statuses not given are 0.
func (m *Metrics) SetTrackerRunGroups(byStatus map[string]int) {
	sums := make(map[string]int, len(m.tracker.runGroups))
	for status, n := range byStatus {
		sums[m.tracker.runGroups.key(strings.ToLower(status))] += n
	}
	for label, g := range m.tracker.runGroups {
		g.Set(float64(sums[label]))
	}
}

// TrackerTerminal records a run group that reached terminal status (any
// case) sinceSubmit after its submission.
func (m *Metrics) TrackerTerminal(status string, sinceSubmit time.Duration) {
	m.tracker.terminal.get(strings.ToLower(status)).Observe(seconds(sinceSubmit))
}

// TrackerEvent records a lifecycle event published, by kind
// (TrackerEventGroup or TrackerEventRun).
func (m *Metrics) TrackerEvent(kind string) { m.tracker.events.get(kind).Inc() }

// TrackerTerminateCall records one TerminateRunGroup call of the tracker
// and the failure's class, 0 for a success.
func (m *Metrics) TrackerTerminateCall(class submit.Class) {
	label := classSuccess
	if class != 0 {
		label = m.classes.norm(class.String())
	}
	m.tracker.terminates.get(label).Inc()
}

// TrackerUnknownStatus records a change to a status the tracker does not
// know.
func (m *Metrics) TrackerUnknownStatus() { m.tracker.unknown.Inc() }

// TrackerError records a failed tracker operation.
func (m *Metrics) TrackerError() { m.tracker.errors.Inc() }
