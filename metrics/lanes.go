package metrics

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omicsq/omicsq/client"
)

// The scheduler's series (priority lanes and fairness keys, internal/lanes):
// what each lane and key was given and what each still has queued.
//
// Fairness keys are bounded two ways. Counters carry only the keys an
// operator named in --fairness-weights (fixed at start), FairnessLegacy for
// the bare requests subject, and other. The backlog gauge carries the top
// FairnessTopN keys by backlog at the last refresh (named keys by name,
// others by FairnessLabel of their token: a hash, never a request value),
// the rest summed as other; it is rebuilt at every refresh, so at most
// lanes × (FairnessTopN + 1) series exist at a time.

// FairnessTopN is how many fairness keys the backlog gauge names.
const FairnessTopN = 10

// FairnessLegacy labels the flow of the bare requests subject.
const FairnessLegacy = "legacy"

// FairnessLabel is the label of an unnamed fairness key's token: "t-" and
// its first 12 hex digits (client.KeyToken of the key finds it).
func FairnessLabel(token string) string {
	if token == "" {
		return FairnessLegacy
	}
	return "t-" + token[:min(12, len(token))]
}

var (
	laneNames = labels(client.Priorities)
	// Scheduling wait: tens of ms for an urgent request, hours for a
	// routine one behind a large backlog.
	laneWaitBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400}
)

type laneSeries struct {
	scheduled series[prometheus.Counter]
	wait      series[prometheus.Observer]
	backlog   series[prometheus.Gauge]
	keyVec    *prometheus.CounterVec
	keyBack   *prometheus.GaugeVec

	mu    sync.Mutex
	named map[string]bool // fairness_key values of the counter besides other
}

func newLaneSeries(add func(prometheus.Collector)) *laneSeries {
	s := &laneSeries{
		scheduled: newCounters(add, "omicsq_lane_scheduled_total",
			"Request messages the fleet's scheduler gave this worker to submit, by priority lane.", "lane", laneNames),
		wait: newHistograms(add, "omicsq_lane_schedule_wait_seconds",
			"Time from a request's enqueue to the scheduler choosing it, by priority lane.", laneWaitBuckets, "lane", laneNames),
		backlog: newGauges(add, "omicsq_lane_backlog_messages",
			"Request messages queued and not yet delivered, by priority lane (the whole fleet's, as this worker last read it).", "lane", laneNames),
		keyVec: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "omicsq_fairness_scheduled_total",
			Help: "Request messages the scheduler gave this worker, by lane and fairness key (keys named in --fairness-weights, legacy, or other)."},
			[]string{"lane", "fairness_key"}),
		keyBack: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "omicsq_fairness_backlog_messages",
			Help: "Request messages queued and not yet delivered, by lane and fairness key: the top 10 keys by backlog, the rest as other."},
			[]string{"lane", "fairness_key"}),
		named: map[string]bool{FairnessLegacy: true},
	}
	add(s.keyVec)
	add(s.keyBack)
	for _, l := range withOther(laneNames) {
		s.keyVec.WithLabelValues(l, other)
		s.keyVec.WithLabelValues(l, FairnessLegacy)
		s.keyBack.WithLabelValues(l, other)
	}
	return s
}

// NameFairnessKeys gives the keys an operator named (in --fairness-weights)
// their own series of omicsq_fairness_scheduled_total; others count as
// other. Call it once at start: names are bounded by the configuration.
func (m *Metrics) NameFairnessKeys(names []string) {
	s := m.lanes
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		if n == "" || n == other {
			continue
		}
		s.named[n] = true
		for _, l := range withOther(laneNames) {
			s.keyVec.WithLabelValues(l, n)
		}
	}
}

// LaneScheduled records a message the scheduler chose: its lane, its
// fairness key's label (a name from NameFairnessKeys or FairnessLegacy, else
// counted as other) and how long after its enqueue.
func (m *Metrics) LaneScheduled(lane client.Priority, key string, wait time.Duration) {
	s := m.lanes
	l := s.scheduled.key(string(lane))
	s.scheduled[l].Inc()
	s.wait[l].Observe(seconds(wait))
	s.mu.Lock()
	if !s.named[key] {
		key = other
	}
	s.mu.Unlock()
	s.keyVec.WithLabelValues(l, key).Inc()
}

// FairnessBacklog is one fairness key's backlog in one lane.
type FairnessBacklog struct {
	Lane  client.Priority
	Key   string // label: a named key, FairnessLegacy or FairnessLabel
	Count uint64
}

// SetLaneBacklog sets the lanes' backlog and rebuilds the fairness-key
// backlog gauge from keys: the FairnessTopN largest by name, the rest
// summed as other per lane.
func (m *Metrics) SetLaneBacklog(keys []FairnessBacklog) {
	s := m.lanes
	byLane := map[string]uint64{}
	for _, k := range keys {
		byLane[s.backlog.key(string(k.Lane))] += k.Count
	}
	for _, l := range withOther(laneNames) {
		s.backlog[l].Set(float64(byLane[l]))
	}
	keys = slices.Clone(keys)
	slices.SortFunc(keys, func(a, b FairnessBacklog) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Lane, b.Lane), cmp.Compare(a.Key, b.Key))
	})
	s.keyBack.Reset()
	rest := map[string]uint64{}
	shown := 0
	for _, k := range keys {
		l := s.backlog.key(string(k.Lane))
		if shown < FairnessTopN && k.Count > 0 && k.Key != other {
			s.keyBack.WithLabelValues(l, k.Key).Add(float64(k.Count))
			shown++
			continue
		}
		rest[l] += k.Count
	}
	for _, l := range withOther(laneNames) {
		s.keyBack.WithLabelValues(l, other).Set(float64(rest[l]))
	}
}
