package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// The seed's two example bodies, published as they stand (no key header, so
// the key is derived), end as RunGroupIds on the results stream. Each runs on
// its own sandbox: both are named "test" in one project, which the API (and
// the sandbox) would refuse as a duplicate name.
func TestSeedExamplesEndAsRunGroups(t *testing.T) {
	for _, file := range []string{"seed_singleton.json", "seed_batch.json"} {
		t.Run(file, func(t *testing.T) {
			e := newTestEnv(t, sandbox.Options{})
			body := readExample(t, file)
			if _, err := e.js.Publish(context.Background(), e.topo.RequestsSubject, body); err != nil {
				t.Fatal(err)
			}
			e.startWorker("w1")
			results, dead := e.waitSettled(1, 30*time.Second)
			if len(dead) != 0 {
				t.Fatalf("dead letters: %+v", dead)
			}
			if len(results) != 1 {
				t.Fatalf("results = %d, want 1", len(results))
			}
			groups := e.sb.RunGroups()
			if len(groups) != 1 {
				t.Fatalf("sandbox run groups = %d, want 1", len(groups))
			}
			for _, rs := range results {
				if len(rs) != 1 || rs[0].RunGroupID != groups[0].RunGroupId || !strings.HasPrefix(rs[0].RunGroupID, "run-") {
					t.Fatalf("result %+v does not name sandbox run group %s", rs, groups[0].RunGroupId)
				}
				if rs[0].Attempts != 1 || rs[0].RequestID == "" || rs[0].EnqueuedAt.IsZero() || rs[0].SubmittedAt.IsZero() {
					t.Fatalf("result lacks fields: %+v", rs[0])
				}
			}
		})
	}
}

// Each invalid request is dead-lettered with the reason the API would give,
// without spending any API quota.
func TestInvalidRequestsDeadLetteredWithoutAPICalls(t *testing.T) {
	e := newTestEnv(t, sandbox.Options{})
	cases := map[string]struct {
		body string
		code string
	}{
		"not-json":       {`this is not json`, "InvalidParameter"},
		"missing-name":   {`{"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K"}`, "MissingParameter"},
		"no-input":       {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1"}`, "MissingParameter"},
		"both-inputs":    {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","InputCosUri":"cos://b/k.json"}`, "InvalidParameter"},
		"bad-base64":     {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"%%%"}`, "InvalidParameterValue.InvalidBase64Encode"},
		"input-not-json": {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"bm90IGpzb24="}`, "InvalidParameterValue.InvalidInputJsonFormat"},
		"bad-failure":    {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","Option":{"FailureMode":"Sometimes"}}`, "InvalidParameterValue.InvalidRunOption"},
		"unknown-field":  {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","Priority":1}`, "UnknownParameter"},
		"wrong-type":     {`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"e30K","CacheClearDelay":"soon"}`, "InvalidParameter"},
		"cos-workdir":    {`{"ApplicationId":"app-1","Name":"a","EnvironmentId":"env-1","InputBase64":"e30K","WorkDir":"cos://b/w"}`, "MissingParameter"},
	}
	for key, c := range cases {
		e.publish(key, []byte(c.body))
	}
	w := e.startWorker("w1")
	results, dead := e.waitSettled(len(cases), 30*time.Second)
	if len(results) != 0 {
		t.Fatalf("results for invalid requests: %+v", results)
	}
	for key, c := range cases {
		d := dead[key]
		if len(d) != 1 {
			t.Errorf("%s: %d dead letters, want 1", key, len(d))
			continue
		}
		if d[0].Reason != "invalid_request" || d[0].Error.Code != c.code || d[0].Attempts != 0 {
			t.Errorf("%s: dead letter reason=%s code=%s attempts=%d; want invalid_request %s 0", key, d[0].Reason, d[0].Error.Code, d[0].Attempts, c.code)
		}
		if len(d[0].Request) == 0 && d[0].RawBase64 == "" {
			t.Errorf("%s: the original request was not kept", key)
		}
	}
	if n := e.sb.Stats().Actions["RunApplication"].Arrivals; n != 0 {
		t.Fatalf("sandbox saw %d RunApplication calls for invalid requests, want 0", n)
	}
	m := scrape(t, w.st.MetricsAddr)
	if !strings.Contains(m, fmt.Sprintf(`omicsq_dead_letters_total{reason="invalid_request"} %d`, len(cases))) {
		t.Errorf("metrics do not count %d invalid_request dead letters", len(cases))
	}
}

// With the sandbox throttling 20% and failing 10% with InternalError, 500
// requests each end as exactly one result, and the sandbox holds exactly one
// run group per result.
func TestFaultyAPIEachRequestEndsOnce(t *testing.T) {
	e := newTestEnv(t, sandbox.Options{Rate: 0, Faults: sandbox.Faults{ThrottleP: 0.2, InternalErrorP: 0.1}})
	const n = 500
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("req-%03d", i), request(fmt.Sprintf("sample-%03d", i)))
	}
	w := e.startWorker("w1", "--rate", "0", "--concurrency", "32")
	results, dead := e.waitSettled(n, 120*time.Second)
	assertExactlyOnce(t, e, n, results, dead)
	if len(dead) != 0 {
		t.Fatalf("%d dead letters, want 0 (retries should absorb throttling and InternalError)", len(dead))
	}
	m := scrape(t, w.st.MetricsAddr)
	if !strings.Contains(m, fmt.Sprintf(`omicsq_messages_processed_total{outcome="success"} %d`, n)) {
		t.Errorf("metrics do not show %d successes", n)
	}
}

// A worker stopped mid-run and Started again loses nothing and duplicates
// nothing.
func TestWorkerRestartMidRunLosesNothing(t *testing.T) {
	e := newTestEnv(t, sandbox.Options{Rate: 0})
	const n = 300
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("req-%03d", i), request(fmt.Sprintf("sample-%03d", i)))
	}
	w := e.startWorker("w1", "--rate", "200", "--rate-limit-scope", "local")
	deadline := time.Now().Add(30 * time.Second)
	for len(e.sb.RunGroups()) < n/3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	w.stop()
	if got := len(e.sb.RunGroups()); got >= n {
		t.Fatalf("the first worker finished everything (%d) before the restart; the test proves nothing", got)
	}
	e.startWorker("w2", "--rate", "0")
	results, dead := e.waitSettled(n, 60*time.Second)
	assertExactlyOnce(t, e, n, results, dead)
}

// Credentials refused: the fleet pauses, keeps every message (none
// dead-lettered), reports not ready, and resumes by itself once the API
// accepts the key again.
func TestSystemicFailurePausesThenResumes(t *testing.T) {
	e := newTestEnv(t, sandbox.Options{Rate: 0})
	e.sb.ForceError("AuthFailure.SecretIdNotFound")
	const n = 200
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("req-%03d", i), request(fmt.Sprintf("sample-%03d", i)))
	}
	w := e.startWorker("w1", "--rate", "0")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(scrape(t, w.st.MetricsAddr), `omicsq_paused{reason="auth"} 1`) {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not pause on AuthFailure")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + w.st.MetricsAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d while paused, want 503\n%s", resp.StatusCode, w.logs.String())
	}
	time.Sleep(time.Second) // give a broken worker the chance to dead-letter
	ds, _ := e.js.Stream(context.Background(), e.topo.DLQStream)
	if info, _ := ds.Info(context.Background()); info.State.Msgs != 0 {
		t.Fatalf("%d dead letters during a systemic failure, want 0", info.State.Msgs)
	}
	if got := len(e.sb.RunGroups()); got != 0 {
		t.Fatalf("%d run groups created while credentials were refused", got)
	}
	e.sb.ForceError("")
	results, dead := e.waitSettled(n, 60*time.Second)
	assertExactlyOnce(t, e, n, results, dead)
	if len(dead) != 0 {
		t.Fatalf("%d dead letters, want 0", len(dead))
	}
}

// The zero-setup default: embedded JetStream and the in-process sandbox.
func TestZeroSetupSandboxMode(t *testing.T) {
	args := []string{"--sandbox", "--store-dir", t.TempDir(), "--embedded-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}
	w := startRun(t, args, func(string) string { return "" })
	if w.st.Sandbox == nil || !strings.Contains(w.logs.String(), "SANDBOX MODE") {
		t.Fatalf("sandbox mode not announced; logs:\n%s", w.logs.String())
	}
	nc, js := connect(t, w.st.NATSURL)
	defer nc.Close()
	topo := queue.DefaultTopology()
	if _, err := js.Publish(context.Background(), topo.RequestsSubject, readExample(t, "seed_singleton.json")); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(topo.ResultsPrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatalf("no result on %s.>: %v\n%s", topo.ResultsPrefix, err, w.logs.String())
	}
	r, err := client.DecodeResult(msg.Data)
	if err != nil || !strings.HasPrefix(r.RunGroupID, "run-") {
		t.Fatalf("result %+v, %v", r, err)
	}
}

func assertExactlyOnce(t *testing.T, e *testEnv, n int, results map[string][]client.Result, dead map[string][]client.DeadLetter) {
	t.Helper()
	for k, rs := range results {
		if len(rs) != 1 {
			t.Errorf("key %s has %d results", k, len(rs))
		}
		if len(dead[k]) != 0 {
			t.Errorf("key %s has both a result and a dead letter", k)
		}
	}
	for k, ds := range dead {
		if len(ds) != 1 {
			t.Errorf("key %s has %d dead letters", k, len(ds))
		}
	}
	if got := len(results) + len(dead); got != n {
		t.Errorf("%d requests settled, want %d (lost: %d)", got, n, n-got)
	}
	byName := map[string]int{}
	for _, g := range e.sb.RunGroups() {
		byName[g.Name]++
	}
	for name, c := range byName {
		if c != 1 {
			t.Errorf("run group name %s created %d times", name, c)
		}
	}
	if len(byName) != len(results) {
		t.Errorf("sandbox has %d run groups for %d results", len(byName), len(results))
	}
}

// Every body the RunApplication page allows (testdata/runapplication/
// allowed: blanks, CJK, newlines, long values, every optional struct) is
// submitted by the worker and accepted by the sandbox, whose validator is
// written apart from the client's. The page's two examples share a Name, so
// repeated Names get a suffix here (one project holds each Name once).
func TestWorkerSubmitsTheAllowedCorpus(t *testing.T) {
	files, err := filepath.Glob("../../testdata/runapplication/allowed/*.json")
	if err != nil || len(files) < 45 {
		t.Fatalf("%d allowed corpus bodies (%v)", len(files), err)
	}
	e := newTestEnv(t, sandbox.Options{})
	names := map[string]bool{}
	for i, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		var name string
		_ = json.Unmarshal(m["Name"], &name)
		if names[name] {
			m["Name"], _ = json.Marshal(fmt.Sprintf("%s-%d", name, i))
			body, _ = json.Marshal(m)
		}
		names[name] = true
		e.publish(fmt.Sprintf("corpus-%03d", i), body)
	}
	e.startWorker("w1")
	results, dead := e.waitSettled(len(files), 60*time.Second)
	for k, ds := range dead {
		t.Errorf("%s dead-lettered: %s %s %s", k, ds[0].Reason, ds[0].Error.Code, ds[0].Error.Field)
	}
	if len(results) != len(files) || len(e.sb.RunGroups()) != len(files) {
		t.Errorf("%d results and %d run groups for %d allowed bodies", len(results), len(e.sb.RunGroups()), len(files))
	}
}

// An environment outage is not the samples' fault: with the sandbox
// answering EnvironmentNotAvailable for 2 minutes while 1,000 requests
// wait, the fleet pauses (reason environment) instead of dead-lettering.
// The probe proves RunApplication is authorised (an invalid call answered
// with a parameter error), which does not prove the environment is back,
// so one trial call is let through per probe; once the environment
// recovers the trial succeeds, the fleet resumes, and all 1,000 are
// submitted, none twice.
func TestEnvironmentOutagePausesInsteadOfDeadLettering(t *testing.T) {
	outage := 2 * time.Minute
	if testing.Short() {
		outage = 10 * time.Second
	}
	e := newTestEnv(t, sandbox.Options{Rate: 0})
	e.sb.SetEnvironmentAvailable("env-05d0g0w2", false)
	start := time.Now()
	const n = 1000
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("env-%04d", i), request(fmt.Sprintf("env-sample-%04d", i)))
	}
	w := e.startWorker("w1", "--rate", "0", "--pause-probe-interval", "1s")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(scrape(t, w.st.MetricsAddr), `omicsq_paused{reason="environment"} 1`) {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not pause on EnvironmentNotAvailable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Until(start.Add(outage)))
	ds, _ := e.js.Stream(context.Background(), e.topo.DLQStream)
	if info, _ := ds.Info(context.Background()); info.State.Msgs != 0 {
		t.Fatalf("%d dead letters during the outage, want 0", info.State.Msgs)
	}
	refused := e.sb.Stats().Actions["RunApplication"].Calls["InvalidParameterValue.EnvironmentNotAvailable"]
	e.sb.SetEnvironmentAvailable("env-05d0g0w2", true)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stats %+v\nlogs:\n%s", e.sb.Stats().Actions["RunApplication"].Calls, tailLines(w.logs.String(), 40))
		}
	})
	results, dead := e.waitSettled(n, 90*time.Second)
	assertExactlyOnce(t, e, n, results, dead)
	if len(dead) != 0 {
		t.Fatalf("%d dead letters, want 0", len(dead))
	}
	// The calls spent on the outage: the first burst before the pause was
	// seen, then one trial per probe.
	if limit := int64(64 + 2*outage/time.Second); refused > limit {
		t.Errorf("%d RunApplication calls refused during a %v outage, want at most %d", refused, outage, limit)
	}
	t.Logf("outage %v: %d calls refused with EnvironmentNotAvailable, then %d submitted in %v", outage, refused, n,
		time.Since(start.Add(outage)).Round(100*time.Millisecond))
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// A sample sheet of 200 rows with a wrong ApplicationId mixed with 200 good
// rows: after a bounded number of rejected calls (--breaker-threshold 5,
// plus what was already in flight: at most 5 + --concurrency) the breaker
// opens and holds the bad rows without calling; the 200 good rows are all
// submitted meanwhile; none is dead-lettered; the breaker metric (which the
// OmicsqBreakerOpen alert reads) counts the trip; and one release with the
// corrected ApplicationId — what `enqueue breaker release ID --set
// ApplicationId=...` does — submits the 200 held rows exactly once.
func TestBreakerHoldsAPoisonedSampleSheet(t *testing.T) {
	const good, typo = "app-sweet-cerulean-frog-569111", "app-sweet-cerulean-frog-56911"
	e := newTestEnv(t, sandbox.Options{Rate: 0, KnownApplications: []string{good}})
	const n = 200
	for i := 0; i < n; i++ {
		e.publish(fmt.Sprintf("good-%03d", i), request(fmt.Sprintf("good-sample-%03d", i)))
		bad := request(fmt.Sprintf("bad-sample-%03d", i))
		bad = []byte(strings.Replace(string(bad), good, typo, 1))
		e.publish(fmt.Sprintf("bad-%03d", i), bad)
	}
	const concurrency = 16
	w := e.startWorker("w1", "--rate", "0", "--concurrency", fmt.Sprint(concurrency),
		"--breaker-threshold", "5", "--breaker-window", "20s", "--breaker-hold", "1s")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		rs, _ := e.outcomes()
		count := 0
		for k := range rs {
			if strings.HasPrefix(k, "good-") {
				count++
			}
		}
		if count == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the %d good rows submitted within 60s", count, n)
		}
	}
	rejected := e.sb.Stats().Actions["RunApplication"].Calls["ResourceNotFound.ApplicationNotExist"]
	if limit := int64(5 + concurrency); rejected > limit {
		t.Errorf("%d calls for the wrong ApplicationId, want at most %d (threshold + in flight)", rejected, limit)
	}
	if _, dead := e.outcomes(); len(dead) != 0 {
		t.Fatalf("%d keys dead-lettered while the breaker holds them", len(dead))
	}
	if !strings.Contains(scrape(t, w.st.MetricsAddr), `omicsq_breaker_opened_total{kind="ApplicationId"} 1`) {
		t.Error("the breaker metric the alert reads did not count the trip")
	}
	kv, err := e.js.KeyValue(context.Background(), e.topo.BreakerBucket)
	if err != nil {
		t.Fatal(err)
	}
	b := breaker.New(kv, breaker.Config{Actor: "test-operator"})
	trips, err := b.List(context.Background())
	if err != nil || len(trips) != 1 || trips[0].State != breaker.Open || trips[0].Resource.ID != typo {
		t.Fatalf("trips %+v (%v), want one open trip for the wrong ApplicationId", trips, err)
	}
	time.Sleep(2 * time.Second) // held rows keep cycling without calls
	if again := e.sb.Stats().Actions["RunApplication"].Calls["ResourceNotFound.ApplicationNotExist"]; again != rejected {
		t.Errorf("%d more calls for the wrong ApplicationId while the breaker was open", again-rejected)
	}

	if err := b.Release(context.Background(), trips[0].ID, map[string]string{"ApplicationId": good}); err != nil {
		t.Fatal(err)
	}
	results, dead := e.waitSettled(2*n, 90*time.Second)
	if len(dead) != 0 {
		t.Fatalf("%d dead letters, want 0", len(dead))
	}
	assertExactlyOnce(t, e, 2*n, results, dead)
	for _, g := range e.sb.RunGroups() {
		if g.ApplicationId != good {
			t.Errorf("run group %s runs %s", g.RunGroupId, g.ApplicationId)
		}
	}
	t.Logf("%d calls for the wrong ApplicationId before the breaker held the rest; all %d rows submitted after the release", rejected, 2*n)
}
