package metrics

import "github.com/prometheus/client_golang/prometheus"

// AutoRetryOutcomes are the outcomes of the workers' auto-retry policy
// (internal/rerun's Kind values; label outcome of
// omicsq_auto_retries_total).
var AutoRetryOutcomes = []string{"created", "found", "already", "refused", "busy", "unresolved"}

func newAutoRetrySeries(add func(prometheus.Collector)) series[prometheus.Counter] {
	return newCounters(add, "omicsq_auto_retries_total",
		"Retries of failed run groups the auto-retry policy (--auto-retry) decided on, by outcome.", "outcome", AutoRetryOutcomes)
}

// AutoRetry records one decision of the auto-retry policy, by outcome
// (created, found: a new run group; refused, busy, unresolved: none).
func (m *Metrics) AutoRetry(outcome string) { m.autoRetries.get(outcome).Inc() }
