// Package metrics is omicsq's Prometheus instrumentation: every series the
// worker exports, registered on a registry the caller owns, plus the HTTP
// handler that serves /metrics, /healthz and /readyz.
//
// Every label takes values from a fixed set and every combination is created
// at zero by New, so rate() works from the first scrape and a series never
// appears later. A value outside its set is counted under "other" instead of
// creating a series: labels never carry request keys, IDs or error text.
//
// The methods are safe for concurrent use and cheap enough for the message
// hot path: label children are resolved once in New, so a call is a map read
// and an atomic add.
package metrics

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

// Reconciliation results (label result of omicsq_reconciliations_total).
const (
	ReconcileFound    = "found"
	ReconcileNotFound = "not_found"
	ReconcileConflict = "conflict"
	ReconcileError    = "error"
)

// API actions (label action of the omicsq_api_* series), and the code
// values that are not Tencent error codes.
const (
	ActionRunApplication    = "RunApplication"
	ActionDescribeRunGroups = "DescribeRunGroups"
	// ActionDescribeRuns only labels the run tracker's own series: only
	// the tracker calls it, and a third action in the omicsq_api_* series
	// would take omicsq_api_errors_total past its cardinality budget.
	ActionDescribeRuns = "DescribeRuns"

	CodeNone  = "none"  // no error
	CodeOther = "other" // a code outside the allow-list
)

// classSuccess is the class label of a call that succeeded; failed calls
// are labelled with their submit.Class.
const classSuccess = "success"

// other replaces any label value outside its fixed set.
const other = "other"

// Label value sets. Each also accepts "other", added by newSet. The
// vocabularies decided elsewhere come from their owners' lists, so a value
// added there gets its series here.
var (
	outcomes         = labels(submission.Outcomes)
	deadLetterCauses = labels(client.DeadLetterReasons)
	retryReasons     = labels(submission.RetryReasons)
	pauseReasons     = labels(pause.Reasons)
	reconcileResults = []string{ReconcileFound, ReconcileNotFound, ReconcileConflict, ReconcileError}
	apiActions       = []string{ActionRunApplication, ActionDescribeRunGroups}
	apiClasses       = append([]string{classSuccess}, classLabels(submit.Classes)...)
	// breakerKinds mirrors the resource kinds of internal/breaker.
	breakerKinds = []string{"ApplicationId", "ApplicationVersionId", "ProjectId", "TableId", "EnvironmentId"}

	// apiErrorCodes is the allow-list of the code label: the codes
	// RunApplication documents (omics-api.md §1.5) and the common codes an
	// operator most needs to tell apart (throttling, bad credentials, no
	// network). Every other code, sub-codes included, counts as "other".
	apiErrorCodes = []string{
		"AuthFailure",
		"AuthFailure.SecretIdNotFound",
		"AuthFailure.SignatureFailure",
		"ClientError.NetworkError",
		"FailedOperation.EmailCountLimitExceeded",
		"FailedOperation.VersionNotReleased",
		"InternalError",
		"InvalidParameter",
		"InvalidParameterValue",
		"InvalidParameterValue.DuplicateName",
		"InvalidParameterValue.EntrypointNotSet",
		"InvalidParameterValue.EnvironmentNotAvailable",
		"InvalidParameterValue.InvalidBase64Encode",
		"InvalidParameterValue.InvalidDescription",
		"InvalidParameterValue.InvalidEmailFormat",
		"InvalidParameterValue.InvalidInputJsonFormat",
		"InvalidParameterValue.InvalidInputPlaceholder",
		"InvalidParameterValue.InvalidName",
		"InvalidParameterValue.InvalidRunOption",
		"InvalidParameterValue.InvalidTimeoutMinutes",
		"OperationDenied",
		"RequestLimitExceeded",
		"ResourceNotFound",
		"ResourceNotFound.ApplicationNotExist",
		"ResourceNotFound.ApplicationVersionNotExist",
		"ResourceNotFound.EnvironmentNotExist",
		"ResourceNotFound.ProjectNotExist",
		"ResourceNotFound.TableNotExist",
		"ResourceNotFound.TableRowNotExist",
	}
)

// Histogram buckets, in seconds unless noted.
var (
	// A message's whole handling: limiter wait, API call(s), reconciliation.
	processingBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	// A slow cloud API: tens of ms when healthy, up to the 60 s SDK timeout
	// and beyond when a caller sets a longer one.
	apiBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	// Queue time: milliseconds when idle, days when a paused fleet resumes
	// (requests are kept up to 14 days).
	ageBuckets = []float64{0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200, 604800}
	// Deliveries of one message (a count); MaxDeliver defaults to 10.
	deliveryBuckets = []float64{1, 2, 3, 4, 5, 6, 8, 10, 15, 20}
	// Time blocked on the rate limiter: zero when under the rate, about
	// 1/rate per queued caller when saturated.
	limiterWaitBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// BuildInfo labels omicsq_build_info. Empty Version or Revision export as
// "unknown"; an empty GoVersion as runtime.Version().
type BuildInfo struct{ Version, Revision, GoVersion string }

// Metrics holds every omicsq series. Build it with New; its methods are safe
// for concurrent use.
type Metrics struct {
	received           prometheus.Counter
	processed          series[prometheus.Counter]
	processingDuration series[prometheus.Observer]
	messageAge         prometheus.Histogram
	deliveryAttempts   prometheus.Histogram
	inFlight           prometheus.Gauge
	concurrencyLimit   prometheus.Gauge

	actions, classes, codes set
	apiRequests             map[labelPair]prometheus.Counter  // by action, class
	apiDuration             map[labelPair]prometheus.Observer // by action, class
	apiErrors               map[labelPair]prometheus.Counter  // by action, code

	retries        series[prometheus.Counter]
	deadLetters    series[prometheus.Counter]
	reconciliation series[prometheus.Counter]
	breakerOpened  series[prometheus.Counter]
	breakerHeld    series[prometheus.Counter]

	limiterWait      prometheus.Histogram
	configuredRate   prometheus.Gauge
	effectiveRate    prometheus.Gauge
	limiterDecreases prometheus.Counter

	pending    prometheus.Gauge
	ackPending prometheus.Gauge
	oldestAge  prometheus.Gauge

	// lastSuccessNanos is read by a GaugeFunc; kept as the maximum seen so
	// concurrent callers finishing out of order never move it backwards.
	lastSuccessNanos atomic.Int64

	natsConnected  prometheus.Gauge
	natsReconnects prometheus.Counter

	pauseMu     sync.Mutex // guards isPaused and pausedFor across the gauge updates
	isPaused    bool
	pausedFor   string
	pausedGauge series[prometheus.Gauge]
	pauses      series[prometheus.Counter]

	resultsPublished prometheus.Counter
	resultsDuplicate prometheus.Counter
	ledgerErrors     prometheus.Counter

	tracker     trackerSeries
	autoRetries series[prometheus.Counter]
	lanes       *laneSeries
}

// New registers every metric on reg, plus the standard Go and process
// collectors, and pre-initialises all known label combinations to 0. It fails
// if any omicsq series is already registered (e.g. New called twice on one
// registry), leaving reg as it was. Go and process collectors that reg
// already has are kept as they are.
func New(reg prometheus.Registerer, info BuildInfo) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil registerer")
	}
	m := &Metrics{
		actions: newSet(apiActions),
		classes: newSet(apiClasses),
		codes:   newSet(apiErrorCodes),
	}
	var own []prometheus.Collector
	add := func(c prometheus.Collector) { own = append(own, c) }

	m.received = newCounter(add, "omicsq_messages_received_total",
		"Run-request messages delivered to this worker by JetStream, redeliveries included.")
	m.processed = newCounters(add, "omicsq_messages_processed_total",
		"Messages this worker finished handling, by outcome.", "outcome", outcomes)
	m.processingDuration = newHistograms(add, "omicsq_message_processing_duration_seconds",
		"Time to handle one message, limiter waits and API calls included, by outcome.",
		processingBuckets, "outcome", outcomes)
	m.messageAge = newHistogram(add, "omicsq_message_age_seconds",
		"Time between JetStream storing a message and this worker receiving it.", ageBuckets)
	m.deliveryAttempts = newHistogram(add, "omicsq_message_delivery_attempts",
		"JetStream delivery count of each received message (1 = first delivery).", deliveryBuckets)
	m.inFlight = newGauge(add, "omicsq_messages_in_flight", "Messages this worker is handling now.")
	m.concurrencyLimit = newGauge(add, "omicsq_concurrency_limit",
		"Most messages this worker handles at once.")

	m.apiRequests, m.apiDuration = newAPISeries(add)
	m.apiErrors = newPairCounters(add, "omicsq_api_errors_total",
		"Failed Tencent Cloud API calls by action and error code; codes outside the allow-list count as other.",
		"action", withOther(apiActions), "code", withOther(apiErrorCodes))

	m.retries = newCounters(add, "omicsq_retries_total",
		"Submission attempts scheduled again after a failure, by reason.", "reason", retryReasons)
	m.deadLetters = newCounters(add, "omicsq_dead_letters_total",
		"Messages moved to the dead-letter stream, by reason.", "reason", deadLetterCauses)
	m.reconciliation = newCounters(add, "omicsq_reconciliations_total",
		"Look-ups of a possibly created run group after an ambiguous outcome, by result.", "result", reconcileResults)
	m.breakerOpened = newCounters(add, "omicsq_breaker_opened_total",
		"Breakers this worker opened: many requests rejected for the same resource, by the resource's field.", "kind", breakerKinds)
	m.breakerHeld = newCounters(add, "omicsq_breaker_held_total",
		"Times a request was held (handed back, no call) because the breaker of one of its resources is open, by field.", "kind", breakerKinds)

	m.addFleetSeries(add)
	m.tracker = newTrackerSeries(add)
	m.autoRetries = newAutoRetrySeries(add)
	m.lanes = newLaneSeries(add)

	add(newBuildInfo(info))

	if err := registerAll(reg, own); err != nil {
		return nil, err
	}
	return m, nil
}

// addFleetSeries adds the limiter, consumer backlog, NATS, pause, result
// and ledger series.
func (m *Metrics) addFleetSeries(add func(prometheus.Collector)) {
	m.limiterWait = newHistogram(add, "omicsq_ratelimiter_wait_seconds",
		"Time a call waited for the API rate limiter.", limiterWaitBuckets)
	m.configuredRate = newGauge(add, "omicsq_ratelimiter_configured_requests_per_second",
		"API call rate the limiter is configured for.")
	m.effectiveRate = newGauge(add, "omicsq_ratelimiter_effective_requests_per_second",
		"API call rate the limiter currently allows, after decreases on throttling.")
	m.limiterDecreases = newCounter(add, "omicsq_ratelimiter_decreases_total",
		"Times the limiter lowered its rate because the API throttled.")

	m.pending = newGauge(add, "omicsq_consumer_pending_messages",
		"Messages in the stream not yet delivered to the consumer (JetStream num_pending).")
	m.ackPending = newGauge(add, "omicsq_consumer_ack_pending_messages",
		"Messages delivered but not yet acknowledged (JetStream num_ack_pending).")
	m.oldestAge = newGauge(add, "omicsq_consumer_oldest_unacked_age_seconds",
		"Age of the oldest run request still in the stream, 0 when it is empty.")
	add(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "omicsq_last_successful_submission_timestamp_seconds",
		Help: "Unix time of this worker's last successful submission, 0 if none yet.",
	}, func() float64 { return float64(m.lastSuccessNanos.Load()) / 1e9 }))

	m.natsConnected = newGauge(add, "omicsq_nats_connected", "1 while connected to NATS, else 0.")
	m.natsReconnects = newCounter(add, "omicsq_nats_reconnects_total", "Reconnections to NATS.")

	m.pausedGauge = newGauges(add, "omicsq_paused",
		"1 on the reason the fleet is paused for, 0 elsewhere; all 0 while submitting.", "reason", pauseReasons)
	m.pauses = newCounters(add, "omicsq_pauses_total",
		"Times this worker saw the fleet enter the paused state, by reason.", "reason", pauseReasons)

	results := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "omicsq_results_published_total",
		Help: "Results published to the results stream; duplicate = the stream already held this request's result.",
	}, []string{"result"})
	m.resultsPublished, m.resultsDuplicate = results.WithLabelValues("published"), results.WithLabelValues("duplicate")
	add(results)
	m.ledgerErrors = newCounter(add, "omicsq_ledger_errors_total",
		"Failed reads or writes of the submission ledger (KV bucket).")
}

// registerAll registers own, then the standard collectors, undoing
// everything on the first failure so a failed New leaves reg untouched.
func registerAll(reg prometheus.Registerer, own []prometheus.Collector) error {
	var done []prometheus.Collector
	undo := func() {
		for _, c := range done {
			reg.Unregister(c)
		}
	}
	for _, c := range own {
		if err := reg.Register(c); err != nil {
			undo()
			return fmt.Errorf("metrics: register: %w", err)
		}
		done = append(done, c)
	}
	standard := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	for _, c := range standard {
		err := reg.Register(c)
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			continue // e.g. the default registry ships them already
		}
		if err != nil {
			undo()
			return fmt.Errorf("metrics: register: %w", err)
		}
		done = append(done, c)
	}
	return nil
}

func newBuildInfo(info BuildInfo) prometheus.Collector {
	orDefault := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "omicsq_build_info",
		Help: "Always 1; the labels identify the running build.",
		ConstLabels: prometheus.Labels{
			"version":   orDefault(info.Version, "unknown"),
			"revision":  orDefault(info.Revision, "unknown"),
			"goversion": orDefault(info.GoVersion, runtime.Version()),
		},
	})
	g.Set(1)
	return g
}

func newAPISeries(add func(prometheus.Collector)) (map[labelPair]prometheus.Counter, map[labelPair]prometheus.Observer) {
	labels := []string{"action", "class"}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "omicsq_api_requests_total",
		Help: "Tencent Cloud API calls by action and result class.",
	}, labels)
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "omicsq_api_request_duration_seconds",
		Help:    "Tencent Cloud API call latency by action and result class.",
		Buckets: apiBuckets,
	}, labels)
	add(requests)
	add(duration)
	counters := make(map[labelPair]prometheus.Counter)
	observers := make(map[labelPair]prometheus.Observer)
	for _, a := range withOther(apiActions) {
		for _, c := range withOther(apiClasses) {
			counters[labelPair{a, c}] = requests.WithLabelValues(a, c)
			observers[labelPair{a, c}] = duration.WithLabelValues(a, c)
		}
	}
	return counters, observers
}

// MessageReceived records a delivery: age is now minus the JetStream
// timestamp (negative ages from clock skew count as 0), numDelivered the
// delivery count from the message metadata.
func (m *Metrics) MessageReceived(age time.Duration, numDelivered uint64) {
	m.received.Inc()
	m.messageAge.Observe(seconds(age))
	m.deliveryAttempts.Observe(float64(numDelivered))
}

// MessageProcessed records that a message was handled with outcome in d.
func (m *Metrics) MessageProcessed(outcome submission.Outcome, d time.Duration) {
	m.processed.get(string(outcome)).Inc()
	m.processingDuration.get(string(outcome)).Observe(seconds(d))
}

// SetInFlight sets the number of messages being handled now.
func (m *Metrics) SetInFlight(n int) { m.inFlight.Set(float64(n)) }

// SetConcurrencyLimit sets the most messages handled at once.
func (m *Metrics) SetConcurrencyLimit(n int) { m.concurrencyLimit.Set(float64(n)) }

// APICallSucceeded records one successful API call of action (an Action*
// value) and its latency.
func (m *Metrics) APICallSucceeded(action string, d time.Duration) {
	m.apiCall(m.actions.norm(action), classSuccess, d)
}

// APICallFailed records one failed API call: action (an Action* value), the
// failure's class, its code (an error code, CodeNone when it has none) and
// its latency. It also counts in omicsq_api_errors_total, under "other" if
// the code is not allow-listed.
func (m *Metrics) APICallFailed(action string, class submit.Class, code string, d time.Duration) {
	action = m.actions.norm(action)
	m.apiCall(action, m.classes.norm(class.String()), d)
	m.apiErrors[labelPair{action, m.codes.norm(code)}].Inc()
}

func (m *Metrics) apiCall(action, class string, d time.Duration) {
	key := labelPair{action, class}
	m.apiRequests[key].Inc()
	m.apiDuration[key].Observe(seconds(d))
}

// Retry records a submission scheduled again, by reason.
func (m *Metrics) Retry(reason submission.RetryReason) { m.retries.get(string(reason)).Inc() }

// DeadLettered records a message moved to the DLQ, by reason.
func (m *Metrics) DeadLettered(reason client.DeadLetterReason) {
	m.deadLetters.get(string(reason)).Inc()
}

// Reconciled records a run-group look-up, by result (a Reconcile* value).
func (m *Metrics) Reconciled(result string) { m.reconciliation.get(result).Inc() }

// BreakerOpened records a breaker this worker opened, by resource field.
func (m *Metrics) BreakerOpened(kind string) { m.breakerOpened.get(kind).Inc() }

// BreakerHeld records a request held by an open breaker, by resource field.
func (m *Metrics) BreakerHeld(kind string) { m.breakerHeld.get(kind).Inc() }

// RateLimitWait records how long a call waited for the rate limiter.
func (m *Metrics) RateLimitWait(d time.Duration) { m.limiterWait.Observe(seconds(d)) }

// SetRateLimit sets the configured and current effective API rates, in calls
// per second.
func (m *Metrics) SetRateLimit(configured, effective float64) {
	m.configuredRate.Set(configured)
	m.effectiveRate.Set(effective)
}

// RateLimitDecrease records that the limiter lowered its rate after throttling.
func (m *Metrics) RateLimitDecrease() { m.limiterDecreases.Inc() }

// SetConsumerState sets the consumer's backlog as last read from JetStream.
func (m *Metrics) SetConsumerState(pending, ackPending uint64, oldestUnackedAge time.Duration) {
	m.pending.Set(float64(pending))
	m.ackPending.Set(float64(ackPending))
	m.oldestAge.Set(seconds(oldestUnackedAge))
}

// LastSuccess records a successful submission at t. An earlier t than one
// already recorded, or the zero time, is ignored.
func (m *Metrics) LastSuccess(t time.Time) {
	if t.IsZero() {
		return
	}
	n := t.UnixNano()
	for {
		cur := m.lastSuccessNanos.Load()
		if n <= cur || m.lastSuccessNanos.CompareAndSwap(cur, n) {
			return
		}
	}
}

// SetNATSConnected sets whether the NATS connection is up.
func (m *Metrics) SetNATSConnected(connected bool) { m.natsConnected.Set(boolFloat(connected)) }

// NATSReconnected records a reconnection to NATS.
func (m *Metrics) NATSReconnected() { m.natsReconnects.Inc() }

// SetPaused records the fleet pause state. A reason outside pause.Reasons
// ("" included, or one a newer worker wrote to the shared flag) shows as
// "other"; reason is ignored when paused is false. omicsq_pauses_total
// counts transitions from running to paused; a new reason while already
// paused moves the gauge without counting a new pause.
func (m *Metrics) SetPaused(paused bool, reason pause.Reason) {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if m.isPaused {
		m.pausedGauge.get(m.pausedFor).Set(0)
	}
	if !paused {
		m.isPaused, m.pausedFor = false, ""
		return
	}
	label := m.pausedGauge.key(string(reason))
	if !m.isPaused {
		m.pauses.get(label).Inc()
	}
	m.pausedGauge.get(label).Set(1)
	m.isPaused, m.pausedFor = true, label
}

// ResultPublished records a result publication; duplicate means the results
// stream already held one for the request.
func (m *Metrics) ResultPublished(duplicate bool) {
	if duplicate {
		m.resultsDuplicate.Inc()
		return
	}
	m.resultsPublished.Inc()
}

// LedgerError records a failed ledger (KV) read or write.
func (m *Metrics) LedgerError() { m.ledgerErrors.Inc() }

// seconds converts d for a histogram or gauge; negative durations (clock
// skew between the NATS server and this host) become 0.
func seconds(d time.Duration) float64 { return math.Max(0, d.Seconds()) }

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// series maps each allowed label value, "other" included, to its child.
type series[T any] map[string]T

// key returns v if it has a child, else "other".
func (s series[T]) key(v string) string {
	if _, ok := s[v]; ok {
		return v
	}
	return other
}

func (s series[T]) get(v string) T { return s[s.key(v)] }

// set is a fixed label value set; norm maps values outside it to "other".
type set map[string]struct{}

func newSet(values []string) set {
	s := make(set, len(values)+1)
	for _, v := range values {
		s[v] = struct{}{}
	}
	s[other] = struct{}{}
	return s
}

func (s set) norm(v string) string {
	if _, ok := s[v]; ok {
		return v
	}
	return other
}

type labelPair struct{ first, second string }

// labels converts a typed vocabulary to its label values.
func labels[T ~string](values []T) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = string(v)
	}
	return out
}

func classLabels(classes []submit.Class) []string {
	out := make([]string, len(classes))
	for i, c := range classes {
		out[i] = c.String()
	}
	return out
}

// withOther returns values plus "other" in a new slice, leaving the
// package-level value lists untouched.
func withOther(values []string) []string { return append(slices.Clip(values), other) }

func newCounter(add func(prometheus.Collector), name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	add(c)
	return c
}

func newGauge(add func(prometheus.Collector), name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	add(g)
	return g
}

func newHistogram(add func(prometheus.Collector), name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	add(h)
	return h
}

func newCounters(add func(prometheus.Collector), name, help, label string, values []string) series[prometheus.Counter] {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	add(vec)
	s := make(series[prometheus.Counter], len(values)+1)
	for _, v := range withOther(values) {
		s[v] = vec.WithLabelValues(v)
	}
	return s
}

func newGauges(add func(prometheus.Collector), name, help, label string, values []string) series[prometheus.Gauge] {
	vec := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{label})
	add(vec)
	s := make(series[prometheus.Gauge], len(values)+1)
	for _, v := range withOther(values) {
		s[v] = vec.WithLabelValues(v)
	}
	return s
}

func newHistograms(add func(prometheus.Collector), name, help string, buckets []float64, label string, values []string) series[prometheus.Observer] {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{label})
	add(vec)
	s := make(series[prometheus.Observer], len(values)+1)
	for _, v := range withOther(values) {
		s[v] = vec.WithLabelValues(v)
	}
	return s
}

func newPairCounters(add func(prometheus.Collector), name, help, firstLabel string, firstValues []string, secondLabel string, secondValues []string) map[labelPair]prometheus.Counter {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{firstLabel, secondLabel})
	add(vec)
	m := make(map[labelPair]prometheus.Counter, len(firstValues)*len(secondValues))
	for _, a := range firstValues {
		for _, b := range secondValues {
			m[labelPair{a, b}] = vec.WithLabelValues(a, b)
		}
	}
	return m
}
