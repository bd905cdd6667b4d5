package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
)

// A scheduled message counts under its lane, and under its fairness key
// only when the operator named the key (or it is the legacy flow); any
// other key, whatever its label, counts as other.
func TestLaneScheduled(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	m.NameFairnessKeys([]string{"lab-a"})
	m.LaneScheduled(client.PriorityUrgent, "lab-a", 2*time.Second)
	m.LaneScheduled(client.PriorityUrgent, "t-0123456789ab", time.Second)
	m.LaneScheduled("bogus", FairnessLegacy, 0)
	snap := snapshot(t, reg)
	for k, want := range map[string]float64{
		`omicsq_lane_scheduled_total{lane="urgent"}`:                            2,
		`omicsq_lane_scheduled_total{lane="other"}`:                             1,
		`omicsq_lane_schedule_wait_seconds_sum{lane="urgent"}`:                  3,
		`omicsq_fairness_scheduled_total{fairness_key="lab-a",lane="urgent"}`:   1,
		`omicsq_fairness_scheduled_total{fairness_key="other",lane="urgent"}`:   1,
		`omicsq_fairness_scheduled_total{fairness_key="legacy",lane="other"}`:   1,
		`omicsq_fairness_scheduled_total{fairness_key="lab-a",lane="routine"}`:  0,
		`omicsq_fairness_scheduled_total{fairness_key="legacy",lane="routine"}`: 0,
		`omicsq_fairness_backlog_messages{fairness_key="other",lane="routine"}`: 0,
	} {
		if got, ok := snap[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	for k := range snap {
		if strings.Contains(k, "t-0123456789ab") {
			t.Errorf("an unnamed key got its own counter: %s", k)
		}
	}
}

// The backlog gauge names at most FairnessTopN keys, the largest, and sums
// the rest as other; a new refresh replaces the old keys.
func TestLaneBacklogIsBounded(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	var keys []FairnessBacklog
	for i := range 25 {
		keys = append(keys, FairnessBacklog{Lane: client.PriorityRoutine, Key: fmt.Sprintf("t-%012d", i), Count: uint64(100 + i)})
	}
	keys = append(keys, FairnessBacklog{Lane: client.PriorityUrgent, Key: "lab-a", Count: 7})
	m.SetLaneBacklog(keys)
	snap := snapshot(t, reg)
	named := 0
	for k := range snap {
		if !strings.HasPrefix(k, "omicsq_fairness_backlog_messages{") {
			continue
		}
		if !strings.Contains(k, `fairness_key="other"`) {
			named++
		}
	}
	if named != FairnessTopN {
		t.Errorf("%d keys named, want %d", named, FairnessTopN)
	}
	if v := snap[`omicsq_fairness_backlog_messages{fairness_key="t-000000000024",lane="routine"}`]; v != 124 {
		t.Errorf("largest key = %v, want 124", v)
	}
	if v := snap[`omicsq_lane_backlog_messages{lane="routine"}`]; v != 25*100+300 {
		t.Errorf("routine backlog = %v", v)
	}
	if v := snap[`omicsq_lane_backlog_messages{lane="urgent"}`]; v != 7 {
		t.Errorf("urgent backlog = %v", v)
	}
	m.SetLaneBacklog(nil)
	for k, v := range snapshot(t, reg) {
		if strings.HasPrefix(k, "omicsq_fairness_backlog_messages{") && (v != 0 || !strings.Contains(k, `fairness_key="other"`)) {
			t.Errorf("after an empty refresh: %s = %v", k, v)
		}
	}
}
