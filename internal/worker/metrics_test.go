package worker

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/omicsq/omicsq/sandbox"
)

// parseMetrics decodes a text exposition into name{labels} -> value.
func parseMetrics(t *testing.T, text string) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+strconv.Quote(l.GetValue()))
			}
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// After a run against a faulty sandbox, the worker's counters agree with
// what the sandbox itself saw, call for call.
func TestMetricsAgreeWithSandbox(t *testing.T) {
	e := newTestEnv(t, sandbox.Options{Faults: sandbox.Faults{ThrottleP: 0.15, InternalErrorP: 0.1}})
	const n = 150
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("req-%03d", i), request(fmt.Sprintf("sample-%03d", i)))
	}
	w := e.startWorker("w1", "--rate", "200")
	results, dead := e.waitSettled(n, 60*time.Second)
	assertExactlyOnce(t, e, n, results, dead)

	m := parseMetrics(t, scrape(t, w.st.MetricsAddr))
	calls := e.sb.Stats().Actions["RunApplication"].Calls
	api := func(class string) float64 {
		return m[`omicsq_api_requests_total{action="RunApplication",class="`+class+`"}`]
	}
	for _, c := range []struct {
		class   string
		sandbox int64
	}{
		{"success", calls["success"]},
		{"throttled", calls["throttled_fault"] + calls["throttled"]},
		{"ambiguous", calls["internal_error"]},
	} {
		if got := api(c.class); got != float64(c.sandbox) {
			t.Errorf("omicsq_api_requests_total{class=%q} = %v, sandbox saw %d", c.class, got, c.sandbox)
		}
	}
	if calls["throttled_fault"] == 0 || calls["internal_error"] == 0 {
		t.Fatalf("the sandbox injected no faults (%v); the comparison proves little", calls)
	}
	if got := m[`omicsq_messages_processed_total{outcome="success"}`]; got != n {
		t.Errorf("processed success = %v, want %d", got, n)
	}
	if got := m[`omicsq_messages_received_total{}`]; got < n {
		t.Errorf("received = %v, want >= %d", got, n)
	}
	if got := m[`omicsq_api_request_duration_seconds{action="RunApplication",class="success"}_count`]; got != float64(calls["success"]) {
		t.Errorf("API latency observations = %v, want %d", got, calls["success"])
	}
	if got := m[`omicsq_ratelimiter_configured_requests_per_second{}`]; got != 200 {
		t.Errorf("configured rate = %v, want 200", got)
	}
	if got := m[`omicsq_ratelimiter_wait_seconds{}_count`]; got < float64(calls["success"]) {
		t.Errorf("limiter wait observations = %v, want >= %d", got, calls["success"])
	}
	if got := m[`omicsq_retries_total{reason="throttled"}`] + m[`omicsq_retries_total{reason="ambiguous"}`]; got == 0 {
		t.Error("no retries counted despite injected faults")
	}
	if m[`omicsq_last_successful_submission_timestamp_seconds{}`] == 0 {
		t.Error("last successful submission timestamp not set")
	}
}
