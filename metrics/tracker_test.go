package metrics

import (
	"math"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

func TestTrackerMethodsChangeExactlyTheirSeries(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		call func(m *Metrics)
		want map[string]float64
	}{
		{"SetTrackerEnabled", func(m *Metrics) { m.SetTrackerEnabled(true) }, map[string]float64{"omicsq_tracker_enabled": 1}},
		{"SetTrackerLeader", func(m *Metrics) { m.SetTrackerLeader(true) }, map[string]float64{"omicsq_tracker_leader": 1}},
		{"SetTrackerBudget", func(m *Metrics) { m.SetTrackerBudget(5) }, map[string]float64{"omicsq_tracker_budget_requests_per_second": 5}},
		{"TrackerDescribeCall success", func(m *Metrics) { m.TrackerDescribeCall(ActionDescribeRuns, 0) }, map[string]float64{
			`omicsq_tracker_describe_calls_total{action="DescribeRuns",class="success"}`: 1,
		}},
		{"TrackerDescribeCall failed, unknown action", func(m *Metrics) { m.TrackerDescribeCall("GetRunStatus", submit.ClassThrottled) }, map[string]float64{
			`omicsq_tracker_describe_calls_total{action="other",class="throttled"}`: 1,
		}},
		{"TrackerCycle", func(m *Metrics) { m.TrackerCycle(1500*time.Millisecond, 100, 3) }, map[string]float64{
			"omicsq_tracker_cycles_total":                                     1,
			"omicsq_tracker_cycle_duration_seconds_count":                     1,
			"omicsq_tracker_cycle_duration_seconds_sum":                       1.5,
			`omicsq_tracker_cycle_describe_calls{action="DescribeRunGroups"}`: 100,
			`omicsq_tracker_cycle_describe_calls{action="DescribeRuns"}`:      3,
		}},
		{"SetTrackerLag", func(m *Metrics) { m.SetTrackerLag(7 * time.Second) }, map[string]float64{"omicsq_tracker_lag_seconds": 7}},
		{"SetTrackerRunGroups", func(m *Metrics) {
			m.SetTrackerRunGroups(map[string]int{"Pending": 2, "RUNNING": 3, "Queued": 1, "Initialising": 1, TrackerUnseen: 4})
		}, map[string]float64{
			`omicsq_tracker_run_groups{status="pending"}`: 2,
			`omicsq_tracker_run_groups{status="running"}`: 3,
			`omicsq_tracker_run_groups{status="other"}`:   2,
			`omicsq_tracker_run_groups{status="unseen"}`:  4,
		}},
		{"SetTrackerRunGroups replaces", func(m *Metrics) {
			m.SetTrackerRunGroups(map[string]int{"Pending": 2})
			m.SetTrackerRunGroups(map[string]int{"Running": 1})
		}, map[string]float64{`omicsq_tracker_run_groups{status="running"}`: 1}},
		{"TrackerTerminal", func(m *Metrics) { m.TrackerTerminal("FAILED", time.Hour) }, map[string]float64{
			`omicsq_tracker_submit_to_terminal_seconds_count{status="failed"}`: 1,
			`omicsq_tracker_submit_to_terminal_seconds_sum{status="failed"}`:   3600,
		}},
		{"TrackerEvent", func(m *Metrics) { m.TrackerEvent(TrackerEventRun) }, map[string]float64{`omicsq_tracker_events_total{kind="run"}`: 1}},
		{"TrackerUnknownStatus", func(m *Metrics) { m.TrackerUnknownStatus() }, map[string]float64{"omicsq_tracker_unknown_statuses_total": 1}},
		{"TrackerError", func(m *Metrics) { m.TrackerError() }, map[string]float64{"omicsq_tracker_errors_total": 1}},
		{"AutoRetry", func(m *Metrics) { m.AutoRetry("found") }, map[string]float64{`omicsq_auto_retries_total{outcome="found"}`: 1}},
		{"AutoRetry unknown outcome", func(m *Metrics) { m.AutoRetry("odd") }, map[string]float64{`omicsq_auto_retries_total{outcome="other"}`: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, reg := newTestMetrics(t)
			before := snapshot(t, reg)
			tc.call(m)
			got := changes(t, before, snapshot(t, reg))
			for k, v := range got {
				if want, ok := tc.want[k]; !ok || math.Abs(v-want) > 1e-9 {
					t.Errorf("%s = %v; want %v (listed: %v)", k, v, want, ok)
				}
			}
			for k, want := range tc.want {
				if _, ok := got[k]; !ok {
					t.Errorf("%s unchanged; want %v", k, want)
				}
			}
		})
	}
}

// Every tracker series exists from New, within the cardinality budget.
func TestTrackerSeriesArePreinitialised(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	snap := snapshot(t, reg)
	want := map[string]int{
		"omicsq_tracker_describe_calls_total":             (len(trackerActions) + 1) * (len(apiClasses) + 1),
		"omicsq_tracker_run_groups":                       len(trackerStatuses) + 1,
		"omicsq_tracker_submit_to_terminal_seconds_count": len(trackerTerminal) + 1,
		"omicsq_tracker_events_total":                     len(trackerKinds) + 1,
		"omicsq_tracker_cycle_describe_calls":             len(trackerActions) + 1,
	}
	for family, n := range want {
		got := 0
		for k := range snap {
			if len(k) > len(family) && k[:len(family)+1] == family+"{" {
				got++
			}
		}
		if got != n || n > 100 {
			t.Errorf("%s: %d series, want %d (at most 100)", family, got, n)
		}
	}
}
