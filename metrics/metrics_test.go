package metrics

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

// newTestMetrics returns Metrics on a fresh registry.
func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(reg, BuildInfo{Version: "1.2.3", Revision: "abc123", GoVersion: "go1.26.8"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, reg
}

// snapshot flattens every omicsq series into "name{k="v",...}" -> value.
// Histograms contribute name_count and name_sum; their buckets are the
// library's business. Go and process series change on their own and are left
// out.
func snapshot(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := make(map[string]float64)
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "omicsq_") {
			continue
		}
		for _, s := range f.GetMetric() {
			labels := seriesLabels(s)
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[f.GetName()+labels] = s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[f.GetName()+labels] = s.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[f.GetName()+"_count"+labels] = float64(s.GetHistogram().GetSampleCount())
				out[f.GetName()+"_sum"+labels] = s.GetHistogram().GetSampleSum()
			default:
				t.Fatalf("%s: unexpected type %v", f.GetName(), f.GetType())
			}
		}
	}
	return out
}

func seriesLabels(s *dto.Metric) string {
	var parts []string
	for _, l := range s.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	if len(parts) == 0 {
		return ""
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// changes returns the series whose value differs between before and after,
// with their new values. It fails the test if the set of series changed: no
// call may ever create or remove a series.
func changes(t *testing.T, before, after map[string]float64) map[string]float64 {
	t.Helper()
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("new series %s appeared after New", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("series %s disappeared", k)
		}
	}
	diff := make(map[string]float64)
	for k, v := range after {
		if b, ok := before[k]; ok && b != v {
			diff[k] = v
		}
	}
	return diff
}

func TestMethodsChangeExactlyTheirSeries(t *testing.T) {
	t.Parallel()
	ts := time.Unix(1_700_000_000, 500_000_000)
	cases := []struct {
		name string
		call func(m *Metrics)
		want map[string]float64
	}{
		{"MessageReceived", func(m *Metrics) { m.MessageReceived(1500*time.Millisecond, 3) }, map[string]float64{
			"omicsq_messages_received_total":         1,
			"omicsq_message_age_seconds_count":       1,
			"omicsq_message_age_seconds_sum":         1.5,
			"omicsq_message_delivery_attempts_count": 1,
			"omicsq_message_delivery_attempts_sum":   3,
		}},
		{"MessageReceived clamps a negative age to 0", func(m *Metrics) { m.MessageReceived(-2*time.Second, 1) }, map[string]float64{
			"omicsq_messages_received_total":         1,
			"omicsq_message_age_seconds_count":       1,
			"omicsq_message_delivery_attempts_count": 1,
			"omicsq_message_delivery_attempts_sum":   1,
		}},
		{"MessageProcessed", func(m *Metrics) { m.MessageProcessed(submission.OutcomeDeadLettered, 2*time.Second) }, map[string]float64{
			`omicsq_messages_processed_total{outcome="dead_lettered"}`:                  1,
			`omicsq_message_processing_duration_seconds_count{outcome="dead_lettered"}`: 1,
			`omicsq_message_processing_duration_seconds_sum{outcome="dead_lettered"}`:   2,
		}},
		{"MessageProcessed unknown outcome", func(m *Metrics) { m.MessageProcessed("exploded", time.Second) }, map[string]float64{
			`omicsq_messages_processed_total{outcome="other"}`:                  1,
			`omicsq_message_processing_duration_seconds_count{outcome="other"}`: 1,
			`omicsq_message_processing_duration_seconds_sum{outcome="other"}`:   1,
		}},
		{"SetInFlight", func(m *Metrics) { m.SetInFlight(7) }, map[string]float64{"omicsq_messages_in_flight": 7}},
		{"SetConcurrencyLimit", func(m *Metrics) { m.SetConcurrencyLimit(16) }, map[string]float64{"omicsq_concurrency_limit": 16}},
		{"APICallSucceeded counts no error", func(m *Metrics) {
			m.APICallSucceeded(ActionRunApplication, 250*time.Millisecond)
		}, map[string]float64{
			`omicsq_api_requests_total{action="RunApplication",class="success"}`:                 1,
			`omicsq_api_request_duration_seconds_count{action="RunApplication",class="success"}`: 1,
			`omicsq_api_request_duration_seconds_sum{action="RunApplication",class="success"}`:   0.25,
		}},
		{"APICallFailed throttled counts its code", func(m *Metrics) {
			m.APICallFailed(ActionRunApplication, submit.ClassThrottled, "RequestLimitExceeded", 40*time.Millisecond)
		}, map[string]float64{
			`omicsq_api_requests_total{action="RunApplication",class="throttled"}`:                 1,
			`omicsq_api_request_duration_seconds_count{action="RunApplication",class="throttled"}`: 1,
			`omicsq_api_request_duration_seconds_sum{action="RunApplication",class="throttled"}`:   0.04,
			`omicsq_api_errors_total{action="RunApplication",code="RequestLimitExceeded"}`:         1,
		}},
		{"APICallFailed code outside the allow-list", func(m *Metrics) {
			m.APICallFailed(ActionDescribeRunGroups, submit.ClassSystemic, "AuthFailure.TokenFailure", time.Second)
		}, map[string]float64{
			`omicsq_api_requests_total{action="DescribeRunGroups",class="systemic"}`:                 1,
			`omicsq_api_request_duration_seconds_count{action="DescribeRunGroups",class="systemic"}`: 1,
			`omicsq_api_request_duration_seconds_sum{action="DescribeRunGroups",class="systemic"}`:   1,
			`omicsq_api_errors_total{action="DescribeRunGroups",code="other"}`:                       1,
		}},
		{"APICallFailed without a code", func(m *Metrics) {
			m.APICallFailed(ActionRunApplication, submit.ClassAmbiguous, CodeNone, 3*time.Second)
		}, map[string]float64{
			`omicsq_api_requests_total{action="RunApplication",class="ambiguous"}`:                 1,
			`omicsq_api_request_duration_seconds_count{action="RunApplication",class="ambiguous"}`: 1,
			`omicsq_api_request_duration_seconds_sum{action="RunApplication",class="ambiguous"}`:   3,
			`omicsq_api_errors_total{action="RunApplication",code="other"}`:                        1,
		}},
		{"APICallFailed unknown action and class", func(m *Metrics) { m.APICallFailed("DeleteRunGroup", 0, "InternalError", time.Second) }, map[string]float64{
			`omicsq_api_requests_total{action="other",class="other"}`:                 1,
			`omicsq_api_request_duration_seconds_count{action="other",class="other"}`: 1,
			`omicsq_api_request_duration_seconds_sum{action="other",class="other"}`:   1,
			`omicsq_api_errors_total{action="other",code="InternalError"}`:            1,
		}},
		{"Retry", func(m *Metrics) { m.Retry(submission.RetryAmbiguous) }, map[string]float64{`omicsq_retries_total{reason="ambiguous"}`: 1}},
		{"Retry unknown reason", func(m *Metrics) { m.Retry("boredom") }, map[string]float64{`omicsq_retries_total{reason="other"}`: 1}},
		{"DeadLettered", func(m *Metrics) { m.DeadLettered(client.ReasonMaxDeliveries) }, map[string]float64{`omicsq_dead_letters_total{reason="max_deliveries"}`: 1}},
		{"DeadLettered unknown reason", func(m *Metrics) { m.DeadLettered("req-4711") }, map[string]float64{`omicsq_dead_letters_total{reason="other"}`: 1}},
		{"Reconciled", func(m *Metrics) { m.Reconciled(ReconcileNotFound) }, map[string]float64{`omicsq_reconciliations_total{result="not_found"}`: 1}},
		{"Reconciled unknown result", func(m *Metrics) { m.Reconciled("maybe") }, map[string]float64{`omicsq_reconciliations_total{result="other"}`: 1}},
		{"RateLimitWait", func(m *Metrics) { m.RateLimitWait(50 * time.Millisecond) }, map[string]float64{
			"omicsq_ratelimiter_wait_seconds_count": 1,
			"omicsq_ratelimiter_wait_seconds_sum":   0.05,
		}},
		{"SetRateLimit", func(m *Metrics) { m.SetRateLimit(20, 12.5) }, map[string]float64{
			"omicsq_ratelimiter_configured_requests_per_second": 20,
			"omicsq_ratelimiter_effective_requests_per_second":  12.5,
		}},
		{"RateLimitDecrease", func(m *Metrics) { m.RateLimitDecrease() }, map[string]float64{"omicsq_ratelimiter_decreases_total": 1}},
		{"SetConsumerState", func(m *Metrics) { m.SetConsumerState(120, 8, 90*time.Second) }, map[string]float64{
			"omicsq_consumer_pending_messages":           120,
			"omicsq_consumer_ack_pending_messages":       8,
			"omicsq_consumer_oldest_unacked_age_seconds": 90,
		}},
		{"LastSuccess", func(m *Metrics) { m.LastSuccess(ts) }, map[string]float64{
			"omicsq_last_successful_submission_timestamp_seconds": 1_700_000_000.5,
		}},
		{"LastSuccess never moves backwards", func(m *Metrics) {
			m.LastSuccess(ts)
			m.LastSuccess(ts.Add(-time.Minute))
			m.LastSuccess(time.Time{})
		}, map[string]float64{"omicsq_last_successful_submission_timestamp_seconds": 1_700_000_000.5}},
		{"SetNATSConnected", func(m *Metrics) { m.SetNATSConnected(true) }, map[string]float64{"omicsq_nats_connected": 1}},
		{"SetNATSConnected back to false", func(m *Metrics) {
			m.SetNATSConnected(true)
			m.SetNATSConnected(false)
		}, map[string]float64{}},
		{"NATSReconnected", func(m *Metrics) { m.NATSReconnected() }, map[string]float64{"omicsq_nats_reconnects_total": 1}},
		{"SetPaused", func(m *Metrics) { m.SetPaused(true, "quota") }, map[string]float64{
			`omicsq_paused{reason="quota"}`:       1,
			`omicsq_pauses_total{reason="quota"}`: 1,
		}},
		{"SetPaused repeated counts one pause", func(m *Metrics) {
			m.SetPaused(true, "quota")
			m.SetPaused(true, "quota")
		}, map[string]float64{
			`omicsq_paused{reason="quota"}`:       1,
			`omicsq_pauses_total{reason="quota"}`: 1,
		}},
		{"SetPaused new reason while paused moves the gauge only", func(m *Metrics) {
			m.SetPaused(true, "quota")
			m.SetPaused(true, "auth")
		}, map[string]float64{
			`omicsq_paused{reason="auth"}`:        1,
			`omicsq_pauses_total{reason="quota"}`: 1,
		}},
		{"SetPaused resume then pause again counts twice", func(m *Metrics) {
			m.SetPaused(true, "auth")
			m.SetPaused(false, "")
			m.SetPaused(true, "auth")
		}, map[string]float64{
			`omicsq_paused{reason="auth"}`:       1,
			`omicsq_pauses_total{reason="auth"}`: 2,
		}},
		{"SetPaused resumed clears the gauge", func(m *Metrics) {
			m.SetPaused(true, "permission")
			m.SetPaused(false, "permission")
		}, map[string]float64{`omicsq_pauses_total{reason="permission"}`: 1}},
		{"SetPaused without a reason", func(m *Metrics) { m.SetPaused(true, "") }, map[string]float64{
			`omicsq_paused{reason="other"}`:       1,
			`omicsq_pauses_total{reason="other"}`: 1,
		}},
		{"SetPaused false while running", func(m *Metrics) { m.SetPaused(false, "auth") }, map[string]float64{}},
		{"ResultPublished", func(m *Metrics) { m.ResultPublished(false) }, map[string]float64{`omicsq_results_published_total{result="published"}`: 1}},
		{"ResultPublished duplicate", func(m *Metrics) { m.ResultPublished(true) }, map[string]float64{`omicsq_results_published_total{result="duplicate"}`: 1}},
		{"LedgerError", func(m *Metrics) { m.LedgerError() }, map[string]float64{"omicsq_ledger_errors_total": 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, reg := newTestMetrics(t)
			before := snapshot(t, reg)
			tc.call(m)
			got := changes(t, before, snapshot(t, reg))
			for k, v := range got {
				want, ok := tc.want[k]
				switch {
				case !ok:
					t.Errorf("%s changed to %v; want unchanged", k, v)
				case math.Abs(v-want) > 1e-9:
					t.Errorf("%s = %v; want %v", k, v, want)
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

func TestNewPreinitialisesEveryLabelValue(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	snap := snapshot(t, reg)
	count := func(prefix string) int {
		n := 0
		for k := range snap {
			if strings.HasPrefix(k, prefix+"{") {
				n++
			}
		}
		return n
	}
	tests := []struct {
		family string
		want   int
	}{
		{"omicsq_messages_processed_total", len(outcomes) + 1},
		{"omicsq_message_processing_duration_seconds_count", len(outcomes) + 1},
		{"omicsq_api_requests_total", (len(apiActions) + 1) * (len(apiClasses) + 1)},
		{"omicsq_api_request_duration_seconds_count", (len(apiActions) + 1) * (len(apiClasses) + 1)},
		{"omicsq_api_errors_total", (len(apiActions) + 1) * (len(apiErrorCodes) + 1)},
		{"omicsq_retries_total", len(retryReasons) + 1},
		{"omicsq_dead_letters_total", len(deadLetterCauses) + 1},
		{"omicsq_reconciliations_total", len(reconcileResults) + 1},
		{"omicsq_paused", len(pauseReasons) + 1},
		{"omicsq_pauses_total", len(pauseReasons) + 1},
		{"omicsq_results_published_total", 2},
	}
	for _, tc := range tests {
		if got := count(tc.family); got != tc.want {
			t.Errorf("%s: %d series; want %d", tc.family, got, tc.want)
		}
	}
	for k, v := range snap {
		if v != 0 && !strings.HasPrefix(k, "omicsq_build_info") {
			t.Errorf("%s = %v after New; want 0", k, v)
		}
	}
	// Prometheus' guidance: investigate any metric above 100 series.
	for _, tc := range tests {
		if tc.want > 100 {
			t.Errorf("%s has %d series, above the 100 cardinality budget", tc.family, tc.want)
		}
	}
}

func TestAPIErrorCodesAllowList(t *testing.T) {
	t.Parallel()
	// The brief's list: what RunApplication documents plus the common codes
	// operators most need to tell apart.
	for _, code := range []string{
		"AuthFailure", "FailedOperation.EmailCountLimitExceeded", "FailedOperation.VersionNotReleased",
		"InternalError", "InvalidParameter", "InvalidParameterValue", "InvalidParameterValue.DuplicateName",
		"InvalidParameterValue.EntrypointNotSet", "InvalidParameterValue.EnvironmentNotAvailable",
		"InvalidParameterValue.InvalidBase64Encode", "InvalidParameterValue.InvalidDescription",
		"InvalidParameterValue.InvalidEmailFormat", "InvalidParameterValue.InvalidInputJsonFormat",
		"InvalidParameterValue.InvalidInputPlaceholder", "InvalidParameterValue.InvalidName",
		"InvalidParameterValue.InvalidRunOption", "InvalidParameterValue.InvalidTimeoutMinutes", "OperationDenied",
		"ResourceNotFound", "ResourceNotFound.ApplicationNotExist", "ResourceNotFound.ApplicationVersionNotExist",
		"ResourceNotFound.EnvironmentNotExist", "ResourceNotFound.ProjectNotExist", "ResourceNotFound.TableNotExist",
		"ResourceNotFound.TableRowNotExist", "RequestLimitExceeded", "AuthFailure.SecretIdNotFound",
		"AuthFailure.SignatureFailure", "ClientError.NetworkError",
	} {
		if !slices.Contains(apiErrorCodes, code) {
			t.Errorf("allow-list lacks %s", code)
		}
	}
	if !slices.IsSorted(apiErrorCodes) || len(slices.Compact(slices.Clone(apiErrorCodes))) != len(apiErrorCodes) {
		t.Errorf("allow-list must be sorted and free of duplicates: %v", apiErrorCodes)
	}
}

func TestBuildInfo(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := New(reg, BuildInfo{Version: "v0.4.0", Revision: "deadbeef"}); err != nil {
		t.Fatalf("New: %v", err)
	}
	want := fmt.Sprintf(`
# HELP omicsq_build_info Always 1; the labels identify the running build.
# TYPE omicsq_build_info gauge
omicsq_build_info{goversion=%q,revision="deadbeef",version="v0.4.0"} 1
`, runtime.Version())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "omicsq_build_info"); err != nil {
		t.Error(err)
	}

	reg = prometheus.NewRegistry()
	if _, err := New(reg, BuildInfo{GoVersion: "go1.26.8"}); err != nil {
		t.Fatalf("New: %v", err)
	}
	want = `
# HELP omicsq_build_info Always 1; the labels identify the running build.
# TYPE omicsq_build_info gauge
omicsq_build_info{goversion="go1.26.8",revision="unknown",version="unknown"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "omicsq_build_info"); err != nil {
		t.Error(err)
	}
}

func TestNewRegistersStandardCollectors(t *testing.T) {
	t.Parallel()
	_, reg := newTestMetrics(t)
	n, err := testutil.GatherAndCount(reg, "go_goroutines", "go_info")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("go collector series: %d; want 2", n)
	}
	if runtime.GOOS == "linux" {
		if n, _ := testutil.GatherAndCount(reg, "process_start_time_seconds"); n != 1 {
			t.Errorf("process_start_time_seconds series: %d; want 1", n)
		}
	}
}

func TestNewKeepsStandardCollectorsAlreadyRegistered(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if _, err := New(reg, BuildInfo{}); err != nil {
		t.Fatalf("New on a registry with Go and process collectors: %v", err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Errorf("Gather: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	if _, err := New(nil, BuildInfo{}); err == nil {
		t.Error("New(nil): got nil error")
	}

	_, reg := newTestMetrics(t)
	if _, err := New(reg, BuildInfo{}); err == nil {
		t.Error("second New on the same registry: got nil error")
	}
}

func TestNewRollsBackOnConflict(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// A clashing series registered by someone else, late in New's order.
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "omicsq_ledger_errors_total", Help: "squatter"}))
	if _, err := New(reg, BuildInfo{}); err == nil {
		t.Fatal("New with a clashing omicsq_ledger_errors_total: got nil error")
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	if !slices.Equal(names, []string{"omicsq_ledger_errors_total"}) {
		t.Errorf("after a failed New the registry holds %v; want only the squatter", names)
	}
}

// TestConcurrentUse hammers every method from several goroutines; run with
// -race. Totals prove no update was lost.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	const workers, calls = 8, 500
	base := time.Unix(1_800_000_000, 0)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				m.MessageReceived(time.Second, 1)
				m.MessageProcessed(submission.OutcomeSuccess, time.Millisecond)
				m.APICallFailed(ActionRunApplication, submit.ClassThrottled, "RequestLimitExceeded", time.Millisecond)
				m.Retry(submission.RetryThrottled)
				m.DeadLettered("unknown")
				m.Reconciled(ReconcileFound)
				m.RateLimitWait(time.Millisecond)
				m.SetRateLimit(20, 10)
				m.RateLimitDecrease()
				m.SetInFlight(i)
				m.SetConcurrencyLimit(4)
				m.SetConsumerState(1, 2, time.Second)
				m.LastSuccess(base.Add(time.Duration(w*calls+i) * time.Millisecond))
				m.SetNATSConnected(i%2 == 0)
				m.NATSReconnected()
				m.SetPaused(i%2 == 0, "quota")
				m.ResultPublished(i%2 == 0)
				m.LedgerError()
			}
		})
	}
	wg.Wait()

	const total = workers * calls
	snap := snapshot(t, reg)
	for k, want := range map[string]float64{
		"omicsq_messages_received_total":                                               total,
		`omicsq_messages_processed_total{outcome="success"}`:                           total,
		`omicsq_api_requests_total{action="RunApplication",class="throttled"}`:         total,
		`omicsq_api_errors_total{action="RunApplication",code="RequestLimitExceeded"}`: total,
		`omicsq_dead_letters_total{reason="other"}`:                                    total,
		"omicsq_ratelimiter_wait_seconds_count":                                        total,
		`omicsq_results_published_total{result="duplicate"}`:                           total / 2,
		"omicsq_ledger_errors_total":                                                   total,
		// The latest of all timestamps, whatever order goroutines finished in.
		"omicsq_last_successful_submission_timestamp_seconds": float64(base.Add((total-1)*time.Millisecond).UnixNano()) / 1e9,
		// Every goroutine ends on SetPaused(false): i runs up to an odd number.
		`omicsq_paused{reason="quota"}`: 0,
	} {
		if got := snap[k]; got != want {
			t.Errorf("%s = %v; want %v", k, got, want)
		}
	}
	if got := snap[`omicsq_pauses_total{reason="quota"}`]; got < 1 || got > total/2 {
		t.Errorf("pauses_total = %v; want between 1 and %d transitions", got, total/2)
	}
}

// BenchmarkHotPath measures the per-message cost of the calls a worker makes
// for one submission.
func BenchmarkHotPath(b *testing.B) {
	m, err := New(prometheus.NewRegistry(), BuildInfo{})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.MessageReceived(time.Second, 1)
			m.RateLimitWait(time.Millisecond)
			m.APICallSucceeded(ActionRunApplication, 100*time.Millisecond)
			m.LastSuccess(now)
			m.ResultPublished(false)
			m.MessageProcessed(submission.OutcomeSuccess, 120*time.Millisecond)
		}
	})
}
