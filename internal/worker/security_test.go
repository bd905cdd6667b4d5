package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

// Distinctive values a leak would carry. The credential is set on the
// sandbox and in the environment the worker's Tencent SDK reads; the markers
// go into every request field that may hold a patient or sample identifier.
const (
	leakSecretID  = "AKIDleakCanary7Hq2Wm9Zt4XpLd"
	leakSecretKey = "leakCanarySecretKey-Vb8Nc3Rf6Tj1Qs"

	mName  = "PTNAME-Qz7w"
	mDesc  = "PTDESC-Kx4r"
	mInput = "PTINPUT-Mv2n" // inside the decoded InputBase64 document
	mCos   = "PTCOS-Hj5s"
	mRow   = "PTROW-Ld8c"
	mEmail = "ptmail-fg3y"
	mKey   = "PTKEY-Wn6e" // in an invalid Omicsq-Key header
)

// startWorkerAs is startWorker with the Tencent credential of the caller's
// choice in the environment the SDK reads.
func (e *testEnv) startWorkerAs(id, secretID, secretKey string, extra ...string) *runningWorker {
	e.t.Helper()
	args := append([]string{
		"--nats-url", e.ns.ClientURL(), "--endpoint", e.sbLn.Addr(), "--insecure-http",
		"--metrics-addr", "127.0.0.1:0", "--worker-id", id, "--api-timeout", "2s",
		"--retry-initial", "50ms", "--retry-max-interval", "500ms", "--max-attempts", "30",
		"--pause-probe-interval", "200ms", "--drain-timeout", "5s", "--log-level", "debug", "--log-format", "json",
	}, extra...)
	e.t.Setenv("TENCENTCLOUD_SECRET_ID", secretID)
	e.t.Setenv("TENCENTCLOUD_SECRET_KEY", secretKey)
	return startRun(e.t, args, func(string) string { return "" })
}

// leakRequests builds request bodies full of markers and remembers every
// string that must never leave the request.
type leakRequests struct {
	forbidden []string // markers, base64 inputs, base64 bodies
}

func newLeakRequests() *leakRequests {
	return &leakRequests{forbidden: []string{mName, mDesc, mInput, mCos, mRow, mEmail, mKey}}
}

// body returns a request for application app, numbered n, with every
// marked field set; mutate edits the map before it is encoded.
func (l *leakRequests) body(app string, n int, mutate func(map[string]any)) []byte {
	input := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"wf.sample":"%s-%03d","wf.patient_dob":"1970-01-01"}`, mInput, n))
	m := map[string]any{
		"ApplicationId": app, "EnvironmentId": "env-known-1",
		"Name":                 fmt.Sprintf("%s-%03d", mName, n),
		"Description":          fmt.Sprintf("tumour/normal pair of %s-%03d", mDesc, n),
		"InputBase64":          input,
		"TableId":              "table-1",
		"TableRowUuids":        []string{fmt.Sprintf("%s-%03d-a", mRow, n), fmt.Sprintf("%s-%03d-b", mRow, n)},
		"EmailForNotification": []string{fmt.Sprintf("%s.%03d@example.org", mEmail, n)},
		"ResultNotification":   true,
		"Option":               map[string]any{"FailureMode": "NoNewCalls"},
	}
	if mutate != nil {
		mutate(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return l.raw(b, m["InputBase64"])
}

// raw registers a body (and its input) as forbidden outside the DLQ body.
func (l *leakRequests) raw(b []byte, input any) []byte {
	if s, ok := input.(string); ok && len(s) > 8 {
		l.forbidden = append(l.forbidden, s)
	}
	l.forbidden = append(l.forbidden, base64.StdEncoding.EncodeToString(b))
	return b
}

func cosInput(n int) func(map[string]any) {
	return func(m map[string]any) {
		delete(m, "InputBase64")
		m["InputCosUri"] = fmt.Sprintf("cos://omics-1250000000/%s-%03d/input.json", mCos, n)
	}
}

// storedMsg is one stored message of a stream.
type storedMsg struct {
	subject string
	header  nats.Header
	data    []byte
}

// dumpStream reads every message stored in a stream, headers included.
func dumpStream(t *testing.T, js jetstream.JetStream, name string) []storedMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []storedMsg
	if info.State.Msgs == 0 {
		return out
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for uint64(len(out)) < info.State.Msgs {
		batch, err := c.Fetch(min(500, int(info.State.Msgs)-len(out)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, storedMsg{subject: m.Subject(), header: m.Headers(), data: m.Data()})
			n++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("stream %s: read %d of %d messages", name, len(out), info.State.Msgs)
		}
	}
	return out
}

func headerString(h nats.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	return b.String()
}

// assertAbsent fails for each forbidden string found (case-insensitively)
// in text, which is named where.
func assertAbsent(t *testing.T, where, text string, forbidden []string) {
	t.Helper()
	lower := strings.ToLower(text)
	for _, f := range forbidden {
		if strings.Contains(lower, strings.ToLower(f)) {
			t.Errorf("%s contain %q", where, f)
		}
	}
}

func waitMetric(t *testing.T, addr, series string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(scrape(t, addr), series) {
		if time.Now().After(deadline) {
			t.Fatalf("metric %s not seen within %v", series, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Requests whose inputs hold distinctive markers, and a distinctive Tencent
// credential, go through every error path the worker has: local validation
// failures (dead-lettered without a call), a permanent API error, throttling
// and InternalError retries, commit-then-fail with reconciliation by name, a
// name conflict, retries and reconciliations exhausted, and credentials
// refused (fleet pause, then resume). Neither the credential nor any input
// (nor the base64 of an input or of a body) may appear in the worker's logs
// at debug level, a /metrics scrape, /readyz, any dead-letter header, any
// result (body or header), any KV bucket (ledger, pause flag, rate limiter)
// or the sandbox's own logs. Dead-letter bodies keep the original request by
// design (for redrive) but must not hold the credential. The recovered-panic
// path is covered by internal/queue's TestConsumerRecoversFromPanicWithoutLeakingIt,
// since the worker binary offers no way to make its API client panic.
func TestSecretsAndInputsStayOutOfEveryOutput(t *testing.T) {
	sbLogs := &logcapture.Buffer{}
	e := newTestEnv(t, sandbox.Options{
		SecretID: leakSecretID, SecretKey: leakSecretKey,
		KnownApplications: []string{"app-known-1"},
		Logger:            slog.New(slog.NewJSONHandler(sbLogs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	// A 1 s breaker window: a rejected request waits that long for its
	// resource's breaker before its dead letter.
	w := e.startWorkerAs("sec-w1", leakSecretID, leakSecretKey, "--max-attempts", "3", "--rate", "200", "--breaker-window", "1s",
		"--tracker=false") // its calls would draw from the seeded fault sequence the phases below rely on
	l := newLeakRequests()
	settled := 0
	publish := func(key string, body []byte) {
		t.Helper()
		e.publish(key, body)
		settled++
	}
	last := time.Now()
	settle := func(phase string) (map[string][]client.Result, map[string][]client.DeadLetter) {
		t.Helper()
		r, d := e.waitSettled(settled, 45*time.Second)
		t.Logf("phase %s: %d requests settled in %v", phase, settled, time.Since(last).Round(time.Millisecond))
		last = time.Now()
		return r, d
	}

	// 1. Rejected locally: each body breaks one rule, and carries markers.
	invalid := map[string][]byte{
		"inv-dup-key": l.raw(bytes.Replace(l.body("app-known-1", 1, nil), []byte(`"Name":`), []byte(`"Name":"`+mName+`-001","Name":`), 1), nil),
		"inv-timeout": l.body("app-known-1", 2, func(m map[string]any) { m["Description"] = mDesc; m["TimeoutNotificationMinutes"] = 1 }),
		"inv-input-json": l.body("app-known-1", 3, func(m map[string]any) {
			m["InputBase64"] = base64.StdEncoding.EncodeToString([]byte("sample " + mInput + "-003 is not JSON"))
		}),
		"inv-input-b64":   l.body("app-known-1", 4, func(m map[string]any) { m["InputBase64"] = mInput + "-004%%%" }),
		"inv-both-inputs": l.body("app-known-1", 5, func(m map[string]any) { m["InputCosUri"] = "cos://b-1/" + mCos + "-005/in.json" }),
		"inv-failure-mode": l.body("app-known-1", 6, func(m map[string]any) {
			m["Option"] = map[string]any{"FailureMode": "Stop-" + mName}
		}),
		"inv-cos-workdir": l.body("app-known-1", 7, func(m map[string]any) { m["WorkDir"] = "cos://b-1/" + mCos + "-007/work" }),
		"inv-nested-unknown": l.body("app-known-1", 8, func(m map[string]any) {
			m["Option"] = map[string]any{"PatientName": mName + "-008"}
		}),
		"inv-unknown":        l.body("app-known-1", 9, func(m map[string]any) { m["PatientName"] = mName + "-009" }),
		"inv-wrong-type":     l.body("app-known-1", 10, func(m map[string]any) { m["Name"] = []string{mName + "-010"} }),
		"inv-cache-fraction": l.body("app-known-1", 11, func(m map[string]any) { m["CacheClearDelay"] = 1.5 }),
		"inv-not-json":       l.raw([]byte("patient "+mName+"-012 sample "+mInput+"-012 ~ not JSON"), nil),
		"inv-utf8":           l.raw(bytes.Replace(l.body("app-known-1", 13, nil), []byte(mDesc), []byte(mDesc+"\xff\xfe"), 1), nil),
		"inv-enum":           l.body("app-known-1", 14, func(m map[string]any) { m["AccessMode"] = "SECRET-" + mName }),
	}
	for key, body := range invalid {
		publish(key, body)
	}
	// An invalid idempotency key carrying a marker: the worker must neither
	// use it nor repeat it.
	badKeyBody := l.body("app-known-1", 15, nil)
	msg := nats.NewMsg(e.topo.RequestsSubject)
	msg.Data = badKeyBody
	msg.Header.Set(client.HeaderKey, "LIMS "+mKey+" 015")
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	settled++
	// 2. A permanent API error: the application does not exist.
	for i := 16; i < 18; i++ {
		publish(fmt.Sprintf("perm-%03d", i), l.body("app-unknown-1", i, nil))
	}
	// Successes, to hold names for the conflict below.
	publish("ok-020", l.body("app-known-1", 20, nil))
	publish("ok-021", l.body("app-known-1", 21, cosInput(21)))
	settle("validation, permanent, success")

	// 3. A name conflict: another request with a taken Name.
	publish("conflict-022", l.body("app-known-1", 22, func(m map[string]any) {
		m["Name"] = fmt.Sprintf("%s-%03d", mName, 20)
		m["Description"] = "another sample " + mDesc + "-022"
	}))
	settle("name conflict")

	// 4. Throttling and InternalError on RunApplication: retries, and after
	// an InternalError a reconciliation by name before resubmitting.
	if err := e.sb.SetFaults(sandbox.Faults{ThrottleP: 0.3, InternalErrorP: 0.3, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	for i := 30; i < 38; i++ {
		publish(fmt.Sprintf("retry-%03d", i), l.body("app-known-1", i, nil))
	}
	settle("retries")

	// 5. Commit-then-fail in every mode: the run group is created behind a
	// failed answer and found by name.
	if err := e.sb.SetFaults(sandbox.Faults{CommitThenFailP: 1, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	for i := 40; i < 43; i++ {
		publish(fmt.Sprintf("commit-%03d", i), l.body("app-known-1", i, cosInput(i)))
	}
	results, _ := settle("commit-then-fail")
	for i := 40; i < 43; i++ {
		if rs := results[fmt.Sprintf("commit-%03d", i)]; len(rs) != 1 || !rs[0].Reconciled {
			t.Errorf("commit-%03d: results %+v, want one reconciled result", i, rs)
		}
	}
	if err := e.sb.SetFaults(sandbox.Faults{}); err != nil {
		t.Fatal(err)
	}

	// 6. Throttled throughout (retried without a budget: the limiter
	// adapts), and lookups failing
	// (InternalError throughout, lookups included: a key that may have
	// created its run group is never dead-lettered for that; it resolves
	// once the API answers again).
	e.sb.ForceError("RequestLimitExceeded")
	publish("exhaust-050", l.body("app-known-1", 50, nil))
	time.Sleep(time.Second)
	e.sb.ForceError("")
	settle("throttled throughout, then answered")
	e.sb.ForceError("InternalError")
	publish("exhaust-051", l.body("app-known-1", 51, nil))
	time.Sleep(2 * time.Second)
	e.sb.ForceError("")
	settle("lookups failing, then answered")

	// 7. The credential refused after a key rotation on the server side:
	// the fleet pauses, keeps the requests, and resumes once it is back.
	if err := e.sb.SetCredentials(leakSecretID, "rotatedKey-Zp4Ty8Uo2"); err != nil {
		t.Fatal(err)
	}
	for i := 60; i < 63; i++ {
		publish(fmt.Sprintf("auth-%03d", i), l.body("app-known-1", i, nil))
	}
	waitMetric(t, w.st.MetricsAddr, `omicsq_paused{reason="auth"} 1`, 20*time.Second)
	readyStatus, readyBody := httpStatus(t, "http://"+w.st.MetricsAddr+"/readyz")
	if readyStatus != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while paused, want 503", readyStatus)
	}
	if err := e.sb.SetCredentials(leakSecretID, leakSecretKey); err != nil {
		t.Fatal(err)
	}
	results, dead := settle("auth failure and resume")
	for i := 60; i < 63; i++ {
		if len(results[fmt.Sprintf("auth-%03d", i)]) != 1 {
			t.Errorf("auth-%03d did not end as a result after the credential came back", i)
		}
	}

	// Every path above was taken.
	reasons := map[string]int{}
	for _, ds := range dead {
		for _, d := range ds {
			reasons[string(d.Reason)]++
		}
	}
	wantReasons := map[string]int{"invalid_request": len(invalid) + 1, "permanent_error": 2, "name_conflict": 1}
	for r, n := range wantReasons {
		if reasons[r] != n {
			t.Errorf("%d dead letters with reason %s, want %d (all: %v)", reasons[r], r, n, reasons)
		}
	}
	st := e.sb.Stats()
	run := st.Actions["RunApplication"]
	if st.FaultsInjected.Throttle == 0 || st.FaultsInjected.InternalError == 0 || st.DuplicateNameRejections == 0 || st.ForcedErrors == 0 ||
		run.Calls["AuthFailure.SignatureFailure"] == 0 || run.Calls["ResourceNotFound.ApplicationNotExist"] != 2 {
		t.Errorf("not every API path was exercised: %+v, RunApplication calls %v", st.FaultsInjected, run.Calls)
	}
	for _, mode := range sandbox.AllCommitFailModes {
		if st.FaultsInjected.CommitThenFail[mode] == 0 {
			t.Errorf("commit-then-fail mode %s was not exercised", mode)
		}
	}

	metricsText := scrape(t, w.st.MetricsAddr)
	w.stop()
	logs := w.logs.String()
	for _, line := range []string{"dead-lettered an invalid request", `"msg":"dead-lettered"`, `"outcome":"success"`,
		"reconciled: the run group exists", "RunApplication failed", "submissions paused fleet-wide", "submissions resumed fleet-wide"} {
		if !strings.Contains(logs, line) {
			t.Errorf("the worker's logs lack %q; the test did not see that path", line)
		}
	}
	if !strings.Contains(sbLogs.String(), "omics call") {
		t.Error("the sandbox logged no calls; its logger is not wired")
	}

	secrets := []string{leakSecretID, leakSecretKey}
	everything := append(slices.Clone(secrets), l.forbidden...)
	assertAbsent(t, "the worker's logs", logs, everything)
	assertAbsent(t, "/metrics", metricsText, everything)
	assertAbsent(t, "/readyz", readyBody, everything)
	assertAbsent(t, "the sandbox's logs", sbLogs.String(), everything)

	dlq := dumpStream(t, e.js, e.topo.DLQStream)
	if len(dlq) != settled-len(results) {
		t.Errorf("%d dead letters stored, want %d", len(dlq), settled-len(results))
	}
	for _, m := range dlq {
		assertAbsent(t, "dead-letter headers", headerString(m.header), everything)
		assertAbsent(t, "dead-letter bodies", string(m.data), secrets)
		d, err := client.DecodeDeadLetter(m.data)
		if err != nil {
			t.Fatal(err)
		}
		assertAbsent(t, "dead-letter keys, errors and histories", fmt.Sprint(d.Key, d.Error, d.History), everything)
	}
	for _, m := range dumpStream(t, e.js, e.topo.ResultsStream) {
		assertAbsent(t, "results", m.subject+"\n"+headerString(m.header)+string(m.data), everything)
	}
	for _, name := range []string{e.topo.AdvisoryStream, "KV_" + e.topo.LedgerBucket, "KV_" + e.topo.ControlBucket, "KV_OMICSQ_RATELIMIT"} {
		msgs := dumpStream(t, e.js, name)
		if name == "KV_"+e.topo.LedgerBucket && len(msgs) == 0 {
			t.Errorf("the ledger is empty; nothing was checked")
		}
		for _, m := range msgs {
			assertAbsent(t, name, m.subject+"\n"+headerString(m.header)+string(m.data), everything)
		}
	}
}

// malformedGen generates malformed request messages from a seeded source.
type malformedGen struct {
	rng *rand.Rand
	lim submit.Limits
}

func (g *malformedGen) token(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[g.rng.IntN(len(alphabet))]
	}
	return string(b)
}

func (g *malformedGen) pick(options ...any) any { return options[g.rng.IntN(len(options))] }

// valid returns a random valid request as a map.
func (g *malformedGen) valid() map[string]any {
	m := map[string]any{
		"ApplicationId": "app-" + g.token(8), "EnvironmentId": "env-" + g.token(8), "Name": "s-" + g.token(10),
		"InputBase64": base64.StdEncoding.EncodeToString([]byte(`{"wf.sample":"` + g.token(6) + `"}`)),
	}
	if g.rng.IntN(2) == 0 {
		m["Description"] = "d " + g.token(20)
	}
	if g.rng.IntN(2) == 0 {
		m["TableId"] = "table-" + g.token(4)
		m["TableRowUuids"] = []string{g.token(8), g.token(8)}
	}
	if g.rng.IntN(2) == 0 {
		m["Option"] = map[string]any{"FailureMode": g.pick("NoNewCalls", "ContinueWhilePossible"), "UseCallCache": true}
	}
	if g.rng.IntN(3) == 0 {
		m["EmailForNotification"] = []string{g.token(5) + "@example.org"}
	}
	return m
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// next returns one malformed message: a body and its headers.
func (g *malformedGen) next(i int) ([]byte, nats.Header) {
	h := nats.Header{}
	m := g.valid()
	switch g.rng.IntN(18) {
	case 0: // not JSON: random bytes, often invalid UTF-8
		b := make([]byte, g.rng.IntN(300))
		for j := range b {
			b[j] = byte(g.rng.IntN(256))
		}
		return b, h
	case 1: // truncated JSON
		b := mustJSON(m)
		return b[:g.rng.IntN(len(b))], h
	case 2: // a value of the wrong JSON type
		field, value := g.pick("Name", "ApplicationId", "TableRowUuids", "CacheClearDelay", "Option", "ResultNotification",
			"EmailForNotification", "TimeoutNotificationMinutes", "NFOption", "Description").(string), g.pick(123, true, "x", []int{1}, map[string]any{}, -1, 1.5)
		if field == "Option" || field == "NFOption" {
			value = g.pick(123, "x", []int{1}, true)
		}
		m[field] = value
	case 3: // unknown fields, including case variants and nested ones
		switch g.rng.IntN(3) {
		case 0:
			m[g.pick("Priority", "name", "inputBase64", "X-"+g.token(4), "").(string)] = g.token(3)
		case 1:
			m["Option"] = map[string]any{"Retries": 3}
		default:
			m["NFOption"] = map[string]any{"Profile": "docker", "Foo": true}
		}
	case 4: // invalid UTF-8 inside a string value
		m["Name"] = "@@NAME@@"
		return bytes.Replace(mustJSON(m), []byte("@@NAME@@"), []byte("s\xff\xfe"+g.token(3)), 1), h
	case 5: // bad enum values and out-of-range numbers
		switch g.rng.IntN(4) {
		case 0:
			m["Option"] = map[string]any{"FailureMode": g.pick("Sometimes", "nonewcalls", "")}
		case 1:
			m["AccessMode"] = g.pick("SECRET", "private", "")
		case 2:
			m["TimeoutNotificationMinutes"] = g.pick(0, 4, 2881, 99999)
		default:
			return bytes.Replace(mustJSON(m), []byte(`"Name"`), []byte(`"CacheClearDelay":18446744073709551616,"Name"`), 1), h
		}
	case 6: // bad base64
		m["InputBase64"] = g.pick("%%%", "e30", "e30K=", "ey J9", base64.URLEncoding.EncodeToString([]byte(`{"a":"??>>"}`)),
			base64.StdEncoding.EncodeToString([]byte("not json")), base64.StdEncoding.EncodeToString([]byte("\xff\xfe")), "")
	case 7: // both inputs, or neither
		if g.rng.IntN(2) == 0 {
			m["InputCosUri"] = "cos://bucket-1/" + g.token(6) + ".json"
		} else {
			delete(m, "InputBase64")
			if g.rng.IntN(2) == 0 {
				m["InputCosUri"] = g.pick("", "s3://b/k", "cos://", "http://x/y").(string)
			}
		}
	case 8: // empty or missing required fields
		field := g.pick("Name", "ApplicationId", "EnvironmentId").(string)
		if g.rng.IntN(2) == 0 {
			m[field] = g.pick("", nil)
		} else {
			delete(m, field)
		}
	case 9: // control characters
		c := string(rune(g.pick(0, 1, 7, 8, 9, 10, 13, 27, 31, 127, 0x85).(int)))
		field := g.pick("Name", "Description", "ApplicationId", "EnvironmentId").(string)
		m[field] = "a" + c + g.token(4)
	case 10: // oversize: the body (the only local size rule: the message limit)
		m["Description"] = strings.Repeat("d", g.lim.MaxRequestBytes+g.rng.IntN(4096))
	case 11: // valid JSON that is not an object
		return []byte(g.pick(`[]`, `"x"`, `null`, `42`, `true`, `[{"Name":"x"}]`, ``, ` `, "\ufeff{}").(string)), h
	case 12: // a duplicated key
		return bytes.Replace(mustJSON(m), []byte(`"Name":`), []byte(`"Name":"dup","Name":`), 1), h
	case 13: // data after the object
		return append(mustJSON(m), []byte(g.pick(`{}`, `x`, `,`, `]`, ` 1`).(string))...), h
	case 14: // an invalid idempotency key in a header (the body is valid)
		bad := g.pick("has space", "tab\tkey", strings.Repeat("k", client.MaxKeyBytes+1), "\xff\xfe", "zero\u200bwidth").(string)
		if g.rng.IntN(2) == 0 {
			h.Set(client.HeaderKey, bad)
		} else {
			h.Set(client.HeaderMsgID, fmt.Sprintf("%s %d", bad, i)) // unique: no server de-duplication
		}
	case 15: // bad e-mail addresses
		m["EmailForNotification"] = []string{g.pick("not an email", "Name <a@b.org>", "a@b", "@example.org", "a@@b.org").(string)}
	case 16: // rules across fields
		switch g.rng.IntN(2) {
		case 0:
			delete(m, "TableId")
			m["TableRowUuids"] = []string{"r-1"}
		default:
			m["WorkDir"] = "cos://bucket-1/work"
		}
	default: // deep nesting
		depth := 100 + g.rng.IntN(12000)
		return bytes.Replace(mustJSON(m), []byte(`"Name":`),
			[]byte(`"Description":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`,"Name":`), 1), h
	}
	return mustJSON(m), h
}

// expectedCode is the dead-letter code the worker must give the message.
func expectedCode(body []byte, h nats.Header, lim submit.Limits) (code string, valid bool) {
	for _, name := range []string{client.HeaderKey, client.HeaderMsgID} {
		if k := h.Get(name); k != "" {
			if client.ValidateKey(k) != nil {
				return "InvalidIdempotencyKey", false
			}
			break
		}
	}
	_, err := submit.DecodeRunApplication(body, lim)
	if err == nil {
		return "", true
	}
	var ve *submit.ValidationError
	if errors.As(err, &ve) {
		return ve.Code, false
	}
	return submit.CodeInvalidParameter, false
}

// 10,000 randomly generated malformed messages: the worker stays up, makes
// no API call, and dead-letters each one with reason invalid_request, the
// code the API would answer, and the original bytes intact.
func TestTenThousandMalformedMessages(t *testing.T) {
	const n = 10000
	const seed = 20261127
	lim := submit.DefaultLimits()
	lim.MaxRequestBytes = 64 << 10
	e := newTestEnv(t, sandbox.Options{})
	// --provision=false keeps the stream's 1 MiB message limit, so bodies
	// above --max-message-bytes reach the worker.
	w := e.startWorker("fuzz-w1", "--concurrency", "64", "--rate", "0", "--provision=false",
		"--max-message-bytes", fmt.Sprint(lim.MaxRequestBytes))

	gen := &malformedGen{rng: rand.New(rand.NewPCG(seed, seed)), lim: lim}
	type sent struct {
		body []byte
		code string
	}
	bySeq := make(map[uint64]sent, n)
	futures := make([]jetstream.PubAckFuture, 0, n)
	bodies := make([]sent, 0, n)
	codes := map[string]int{}
	regenerated := 0
	start := time.Now()
	for i := 0; i < n; i++ {
		body, h := gen.next(i)
		code, valid := expectedCode(body, h, lim)
		for valid { // the generator must never produce a valid request
			regenerated++
			body, h = gen.next(i)
			code, valid = expectedCode(body, h, lim)
		}
		codes[code]++
		msg := nats.NewMsg(e.topo.RequestsSubject)
		msg.Data, msg.Header = body, h
		f, err := e.js.PublishMsgAsync(msg)
		if err != nil {
			t.Fatalf("publish #%d: %v", i, err)
		}
		futures = append(futures, f)
		bodies = append(bodies, sent{body: body, code: code})
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing did not complete")
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				t.Fatalf("message #%d was dropped as a duplicate", i)
			}
			bySeq[ack.Sequence] = bodies[i]
		case err := <-f.Err():
			t.Fatalf("message #%d refused: %v", i, err)
		}
	}
	t.Logf("published %d malformed messages (seed %d, %d regenerated) in %v; codes %v", n, seed, regenerated, time.Since(start), codes)

	deadline := time.Now().Add(90 * time.Second)
	for {
		ds, _ := e.js.Stream(context.Background(), e.topo.DLQStream)
		qs, _ := e.js.Stream(context.Background(), e.topo.RequestsStream)
		di, _ := ds.Info(context.Background())
		qi, _ := qs.Info(context.Background())
		if di.State.Msgs >= n && qi.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d dead-lettered, %d still queued", di.State.Msgs, n, qi.State.Msgs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("all %d dead-lettered %v after the first publish", n, time.Since(start))

	// The worker is still up and serving.
	select {
	case err := <-w.errc:
		t.Fatalf("the worker exited: %v", err)
	default:
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpStatus(t, "http://"+w.st.MetricsAddr+path); code != http.StatusOK {
			t.Errorf("%s = %d %s", path, code, body)
		}
	}
	if st := e.sb.Stats(); st.Actions["RunApplication"].Arrivals != 0 || st.Actions["DescribeRunGroups"].Arrivals != 0 {
		t.Fatalf("malformed messages reached the API: %d RunApplication, %d DescribeRunGroups calls",
			st.Actions["RunApplication"].Arrivals, st.Actions["DescribeRunGroups"].Arrivals)
	}
	if m := scrape(t, w.st.MetricsAddr); !strings.Contains(m, fmt.Sprintf(`omicsq_dead_letters_total{reason="invalid_request"} %d`, n)) {
		t.Errorf("metrics do not count %d invalid_request dead letters", n)
	}

	// Each message is in the DLQ exactly once, with the reason, the code the
	// API would answer and its original bytes.
	seen := make(map[uint64]bool, n)
	bad := 0
	for _, m := range dumpStream(t, e.js, e.topo.DLQStream) {
		d, err := client.DecodeDeadLetter(m.data)
		if err != nil {
			t.Fatalf("undecodable dead letter: %v\n%s", err, m.data)
		}
		s, ok := bySeq[d.StreamSequence]
		switch {
		case !ok || seen[d.StreamSequence]:
			t.Errorf("dead letter for stream sequence %d: published %v, seen before %v", d.StreamSequence, ok, seen[d.StreamSequence])
			bad++
			continue
		case d.Reason != "invalid_request" || m.header.Get(client.HeaderReason) != "invalid_request":
			t.Errorf("seq %d: reason %q (header %q)", d.StreamSequence, d.Reason, m.header.Get(client.HeaderReason))
			bad++
		case d.Error.Code != s.code || m.header.Get(client.HeaderErrorCode) != s.code || d.Attempts != 0:
			t.Errorf("seq %d: code %q (header %q), attempts %d; want %q, 0", d.StreamSequence, d.Error.Code, m.header.Get(client.HeaderErrorCode), d.Attempts, s.code)
			bad++
		}
		original := []byte(d.Request)
		if d.RawBase64 != "" {
			if original, err = base64.StdEncoding.DecodeString(d.RawBase64); err != nil {
				t.Errorf("seq %d: raw_base64: %v", d.StreamSequence, err)
			}
		}
		if !bytes.Equal(original, s.body) {
			t.Errorf("seq %d: the dead letter does not keep the original body", d.StreamSequence)
			bad++
		}
		seen[d.StreamSequence] = true
		if bad > 20 {
			t.Fatal("too many bad dead letters")
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages dead-lettered, want %d", len(seen), n)
	}
	logs := w.logs.String()
	if strings.Contains(strings.ToLower(logs), "panic") {
		t.Errorf("the worker logged a panic")
	}
	if got := strings.Count(logs, "dead-lettered an invalid request"); got != n {
		t.Errorf("%d 'dead-lettered an invalid request' log lines, want %d", got, n)
	}
}

// The embedded JetStream server listens on loopback unless told otherwise
// and says so at start; told to listen beyond loopback, it warns.
func TestEmbeddedServerLoopbackUnlessToldOtherwise(t *testing.T) {
	cases := []struct {
		listen   string
		loopback bool
	}{
		{"127.0.0.1:0", true},
		{"[::1]:0", true},
		{"0.0.0.0:0", false}, // every interface of this sandboxed host; no traffic is sent
	}
	for _, c := range cases {
		t.Run(c.listen, func(t *testing.T) {
			if c.listen == "[::1]:0" {
				ln, err := net.Listen("tcp", c.listen)
				if err != nil {
					t.Skipf("no IPv6 loopback here: %v", err)
				}
				ln.Close()
			}
			args := []string{"--sandbox", "--store-dir", t.TempDir(), "--embedded-listen", c.listen,
				"--metrics-addr", "127.0.0.1:0", "--log-format", "json"}
			w := startRun(t, args, func(string) string { return "" })
			w.stop()
			var Started, warned bool
			for _, line := range strings.Split(w.logs.String(), "\n") {
				var rec struct{ Level, Msg, URL, Addr string }
				if line == "" || json.Unmarshal([]byte(line), &rec) != nil {
					continue
				}
				switch {
				case strings.Contains(rec.Msg, "embedded NATS server Started (loopback only)"):
					Started = rec.Level == "INFO"
				case strings.Contains(rec.Msg, "embedded NATS server listens beyond loopback"):
					warned = rec.Level == "WARN" && strings.Contains(rec.Msg, "without authentication")
				}
			}
			if Started != c.loopback || warned == c.loopback {
				t.Errorf("listen %s: 'loopback only' info logged %v, beyond-loopback warning logged %v\n%s", c.listen, Started, warned, w.logs.String())
			}
			u := strings.TrimPrefix(w.st.NATSURL, "nats://")
			host, _, err := net.SplitHostPort(u)
			if err != nil {
				t.Fatal(err)
			}
			if ip := net.ParseIP(host); c.loopback && (ip == nil || !ip.IsLoopback()) {
				t.Errorf("the embedded server's client URL %s is not loopback", w.st.NATSURL)
			}
		})
	}
}

// documentedPermissions returns the nats-server authorization block of
// docs/security.md.
func documentedPermissions(t *testing.T) string {
	return natstest.DocumentedPermissions(t, filepath.Join("..", "..", "docs", "security.md"))
}

// permissionErrors collects the asynchronous errors of a connection.
type permissionErrors struct{ buf logcapture.Buffer }

func (p *permissionErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	fmt.Fprintln(&p.buf, err)
}

// The NATS permissions documented in docs/security.md are enough for each
// role, and no more: a worker that provisions, a bind-only worker, a
// producer with its own inbox prefix and a DLQ operator do their work under
// them, against a real server loaded with that very configuration, while a
// producer can neither forge a result, read the DLQ or the ledger, write the
// pause flag nor read other clients' replies.
func TestDocumentedNATSPermissionsSuffice(t *testing.T) {
	passwords := map[string]string{
		"omicsq-worker": "pw-worker-1", "omicsq-worker-bind": "pw-bind-2", "omicsq-producer": "pw-producer-3", "omicsq-dlq-operator": "pw-dlq-4",
	}
	t.Setenv("OMICSQ_WORKER_PASSWORD", passwords["omicsq-worker"])
	t.Setenv("OMICSQ_WORKER_BIND_PASSWORD", passwords["omicsq-worker-bind"])
	t.Setenv("OMICSQ_PRODUCER_PASSWORD", passwords["omicsq-producer"])
	t.Setenv("OMICSQ_DLQ_OPERATOR_PASSWORD", passwords["omicsq-dlq-operator"])
	t.Setenv("OMICSQ_CONSOLE_PASSWORD", "pw-console-5") // internal/console tests that user
	conf := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(conf, []byte(documentedPermissions(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("the documented configuration does not load: %v", err)
	}
	ns := natstest.Server(t, opts)
	sb, err := sandbox.New(sandbox.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	sbLn, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sbLn.Close() })
	t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	startAs := func(user string, extra ...string) *runningWorker {
		args := append([]string{"--nats-url", ns.ClientURL(), "--nats-user", user, "--endpoint", sbLn.Addr(), "--insecure-http",
			"--metrics-addr", "127.0.0.1:0", "--worker-id", user, "--api-timeout", "2s", "--retry-initial", "50ms",
			"--pause-probe-interval", "200ms", "--drain-timeout", "5s", "--rate", "50", "--log-format", "json",
			// The auto-retry policy's consumer and bucket need their lines too.
			"--auto-retry", "1", "--auto-retry-messages", "OOMKilled"}, extra...)
		return startRun(t, args, func(k string) string {
			if k == "NATS_PASSWORD" {
				return passwords[user]
			}
			return ""
		})
	}
	connectAs := func(user string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, *permissionErrors) {
		perr := &permissionErrors{}
		nc, err := nats.Connect(ns.ClientURL(), append([]nats.Option{nats.UserInfo(user, passwords[user]), nats.ErrorHandler(perr.handler)}, extra...)...)
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js, perr
	}
	topo := queue.DefaultTopology()
	ctx := context.Background()

	// A worker that provisions everything.
	w1 := startAs("omicsq-worker")

	// A producer with a private inbox prefix publishes and waits for results.
	pnc, pjs, perrs := connectAs("omicsq-producer", nats.CustomInboxPrefix("_INBOX_lims"))
	if _, err := pjs.Stream(ctx, topo.RequestsStream); err != nil {
		t.Fatalf("producer: requests stream: %v", err)
	}
	results, err := pjs.Stream(ctx, topo.ResultsStream)
	if err != nil {
		t.Fatalf("producer: results stream: %v", err)
	}
	watch, err := results.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{topo.ResultsPrefix + ".>"}})
	if err != nil {
		t.Fatalf("producer: watch results: %v", err)
	}
	producer := client.New(pjs, client.WithTopology(topo.Topology))
	publish := func(key string, body []byte) {
		t.Helper()
		if _, err := producer.Publish(ctx, client.Request{Key: key, Body: body}); err != nil {
			t.Fatalf("producer: publish %s: %v", key, err)
		}
	}
	for i, key := range []string{"perm-1", "perm-2"} {
		publish(key, request(fmt.Sprintf("perm-sample-%d", i)))
	}
	publish("perm-bad", []byte(`{"Name":"x"}`))
	got := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		batch, err := watch.Fetch(2-len(got), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("producer: fetch results: %v", err)
		}
		for m := range batch.Messages() {
			r, err := client.DecodeResult(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			got[r.Key] = true
		}
	}
	if !got["perm-1"] || !got["perm-2"] {
		t.Fatalf("producer saw results %v, want perm-1 and perm-2\nworker logs:\n%s", got, w1.logs.String())
	}
	if _, err := results.GetLastMsgForSubject(ctx, topo.ResultSubject("perm-1")); err != nil {
		t.Fatalf("producer: look a result up by key: %v", err)
	}

	// A systemic failure: the worker writes the pause flag, probes, resumes.
	sb.ForceError("AuthFailure.SecretIdNotFound")
	publish("perm-3", request("perm-sample-3"))
	waitMetric(t, w1.st.MetricsAddr, `omicsq_paused{reason="auth"} 1`, 20*time.Second)
	sb.ForceError("")
	natstest.WaitLastMsg(t, results, topo.ResultSubject("perm-3"), 30*time.Second)
	w1.stop()

	// A bind-only worker on the provisioned topology.
	w2 := startAs("omicsq-worker-bind", "--provision=false")
	publish("perm-4", request("perm-sample-4"))
	natstest.WaitLastMsg(t, results, topo.ResultSubject("perm-4"), 30*time.Second)

	// A DLQ operator lists, shows, checks for a result, redrives and deletes.
	_, ojs, oerrs := connectAs("omicsq-dlq-operator")
	dlq, err := ojs.Stream(ctx, topo.DLQStream)
	if err != nil {
		t.Fatalf("operator: dlq stream: %v", err)
	}
	dead := natstest.WaitLastMsg(t, dlq, topo.DLQSubject("perm-bad"), 10*time.Second)
	list, err := dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("operator: list: %v", err)
	}
	if m, err := list.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || m.Headers().Get(client.HeaderReason) != "invalid_request" {
		t.Fatalf("operator: list: %v", err)
	}
	if _, err := dlq.GetMsg(ctx, dead.Sequence); err != nil {
		t.Fatalf("operator: show by sequence: %v", err)
	}
	oresults, err := ojs.Stream(ctx, topo.ResultsStream)
	if err != nil {
		t.Fatalf("operator: results stream: %v", err)
	}
	if _, err := oresults.GetLastMsgForSubject(ctx, topo.ResultSubject("perm-bad")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("operator: result lookup = %v, want not found", err)
	}
	if _, err := ojs.Stream(ctx, topo.RequestsStream); err != nil {
		t.Fatalf("operator: requests stream: %v", err)
	}
	// The client's Redrive republishes and then deletes the dead letter, as
	// enqueue dlq redrive does.
	operator := client.New(ojs, client.WithTopology(topo.Topology))
	stored, err := operator.DeadLetterAt(ctx, dead.Sequence)
	if err != nil || stored.Key != "perm-bad" {
		t.Fatalf("operator: show through the client: %+v, %v", stored, err)
	}
	if _, err := operator.Redrive(ctx, stored, []byte(`{"Name":"x"}`)); err != nil {
		t.Fatalf("operator: redrive and delete: %v", err)
	}
	if _, err := dlq.GetMsg(ctx, dead.Sequence); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("operator: the redriven dead letter is still there: %v", err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		m, err := dlq.GetLastMsgForSubject(ctx, topo.DLQSubject("perm-bad"))
		if err == nil && m.Sequence != dead.Sequence {
			break // the redriven request was dead-lettered again, by the bind-only worker
		}
		if time.Now().After(deadline) {
			t.Fatalf("the redriven request was not dead-lettered again: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Nothing above hit a permission error.
	for who, text := range map[string]string{"provisioning worker": w1.logs.String(), "bind-only worker": w2.logs.String(),
		"producer": perrs.buf.String(), "DLQ operator": oerrs.buf.String()} {
		if strings.Contains(strings.ToLower(text), "permission") {
			t.Errorf("%s hit a permission error:\n%s", who, text)
		}
	}

	// What a producer must not do.
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Second) }
	c, cancel := short()
	if _, err := pjs.Publish(c, topo.ResultsPrefix+".forged", []byte(`{"key":"k","run_group_id":"run-forged"}`)); err == nil {
		t.Error("a producer published a result")
	}
	cancel()
	c, cancel = short()
	if _, err := pjs.Stream(c, topo.DLQStream); err == nil {
		t.Error("a producer read the DLQ stream")
	}
	cancel()
	c, cancel = short()
	if _, err := pjs.KeyValue(c, topo.LedgerBucket); err == nil {
		t.Error("a producer bound the ledger")
	}
	cancel()
	if err := pnc.Publish("$KV."+topo.ControlBucket+".pause", []byte(`{"paused":true,"reason":"config"}`)); err != nil {
		t.Fatal(err)
	}
	var eavesdropped logcapture.Buffer
	if _, err := pnc.Subscribe("_INBOX.>", func(m *nats.Msg) { eavesdropped.Write(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := pnc.Flush(); err != nil {
		t.Fatal(err)
	}
	publish("perm-5", request("perm-sample-5"))
	natstest.WaitLastMsg(t, results, topo.ResultSubject("perm-5"), 30*time.Second) // the worker got it, not the producer
	if strings.Contains(eavesdropped.String(), "perm-sample") {
		t.Error("a producer read a request delivered to a worker")
	}
	for _, want := range []string{`publish to "omicsq.results.forged"`, `publish to "$js.api.stream.info.omicsq_dlq"`,
		`publish to "$js.api.stream.info.kv_omicsq_ledger"`, `publish to "$kv.omicsq_control.pause"`, `subscription to "_inbox.>"`} {
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(strings.ToLower(perrs.buf.String()), want) {
			if time.Now().After(deadline) {
				t.Errorf("no permission violation for %s; the producer's errors:\n%s", want, perrs.buf.String())
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if m := scrape(t, w2.st.MetricsAddr); !strings.Contains(m, `omicsq_paused{reason="config"} 0`) {
		t.Error("the producer's write to the pause flag paused the fleet")
	}
}
