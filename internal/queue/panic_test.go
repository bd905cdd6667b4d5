package queue

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// Markers a leak would carry: request inputs, and the text of the panic
// value itself (which quotes the inputs, as a careless error would).
const (
	panicValueMarker = "PANICVALUE-Rq81"
	panicNameMarker  = "PTNAME-Hb37"
	panicDescMarker  = "PTDESC-Vw52"
	panicInputMarker = "PTINPUT-Ck94"
)

// panickyAPI is an Omics API double that panics, with a value quoting the
// request's inputs, on the first call for onceName and on every call for
// alwaysName; other calls succeed. NATS stays real.
type panickyAPI struct {
	onceName, alwaysName string

	mu      sync.Mutex
	calls   map[string]int // RunApplication calls by Name
	lookups map[string]int // FindRunGroupsByName calls by Name
}

func (a *panickyAPI) RunApplication(_ context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error) {
	a.mu.Lock()
	a.calls[req.Name]++
	n := a.calls[req.Name]
	a.mu.Unlock()
	if req.Name == a.alwaysName || (req.Name == a.onceName && n == 1) {
		panic(fmt.Sprintf("%s: cannot submit %s (%s) with input %s", panicValueMarker, req.Name, *req.Description, *req.InputBase64))
	}
	return &submit.RunApplicationResponse{RunGroupId: fmt.Sprintf("run-double-%d", len(req.Name)*1000+n), RequestId: "req-double"}, nil
}

func (a *panickyAPI) FindRunGroupsByName(_ context.Context, _ *string, name string, _ func(context.Context) error) ([]submit.RunGroup, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lookups[name]++
	return nil, nil // the panicking calls created nothing
}

func (a *panickyAPI) counts(name string) (calls, lookups int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[name], a.lookups[name]
}

// noLimit is a Limiter that never waits.
type noLimit struct{}

func (noLimit) Wait(context.Context) (time.Duration, error) { return 0, nil }
func (noLimit) Throttled(context.Context)                   {}

func panicTestBody(name, sample string) (body []byte, inputB64 string) {
	inputB64 = base64.StdEncoding.EncodeToString([]byte(`{"wf.sample":"` + panicInputMarker + "-" + sample + `"}`))
	body, _ = json.Marshal(map[string]any{
		"ApplicationId": "app-1", "EnvironmentId": "env-1", "Name": name,
		"Description": "patient sample " + panicDescMarker + "-" + sample, "InputBase64": inputB64,
	})
	return body, inputB64
}

// A panic inside the processor (here: in the API client) is recovered by the
// consumer: the consumer keeps running and processing other messages, the
// message is handed back and redelivered later (and, since its call may
// have gone out, reconciled by name before the resubmission), a message that
// panics on every delivery ends in the DLQ (max_deliveries) instead of
// looping, and the panic value, which quotes the request's inputs, is never
// logged, exported or published.
func TestConsumerRecoversFromPanicWithoutLeakingIt(t *testing.T) {
	ctx := context.Background()
	topo := DefaultTopology()
	topo.MaxDeliver = 2 // the poison message is dead-lettered on its 2nd delivery
	logs := &logcapture.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	onceName, alwaysName, goodName := panicNameMarker+"-once", panicNameMarker+"-always", panicNameMarker+"-good"
	api := &panickyAPI{onceName: onceName, alwaysName: alwaysName, calls: map[string]int{}, lookups: map[string]int{}}
	proc, js, reg := testProcessor(t, topo, api, log)
	proc.CallTimeout = 2 * time.Second
	m := proc.Metrics
	cons := &Consumer{JS: js, Topology: topo, Processor: proc, Concurrency: 4, DrainTimeout: 5 * time.Second, Metrics: m, Log: log}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- cons.Run(runCtx) }()

	onceBody, onceB64 := panicTestBody(onceName, "1")
	alwaysBody, alwaysB64 := panicTestBody(alwaysName, "2")
	goodBody, goodB64 := panicTestBody(goodName, "3")
	producer := client.New(js, client.WithTopology(topo.Topology))
	for _, r := range []client.Request{{Key: "panic-once", Body: onceBody}, {Key: "panic-always", Body: alwaysBody}} {
		if _, err := producer.Publish(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	const panicLine = "panic while processing a message"
	waitFor(t, 10*time.Second, "both first deliveries to panic", func() bool { return strings.Count(logs.String(), panicLine) >= 2 })

	// The consumer survived: a good message published after the panics is
	// processed at once, long before the panicking ones come back (10 s).
	published := time.Now()
	if _, err := producer.Publish(ctx, client.Request{Key: "good", Body: goodBody}); err != nil {
		t.Fatal(err)
	}
	results, err := js.Stream(ctx, topo.ResultsStream)
	if err != nil {
		t.Fatal(err)
	}
	dlq, err := js.Stream(ctx, topo.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	goodResult := natstest.WaitLastMsg(t, results, topo.ResultSubject("good"), 8*time.Second)
	if took := time.Since(published); took > 8*time.Second {
		t.Errorf("the good message took %v; the consumer was stalled by the panics", took)
	}
	if c, _ := api.counts(onceName); c != 1 {
		t.Fatalf("the panicking message was called %d times before its 10 s redelivery delay, want 1 (a hot loop?)", c)
	}

	// The message that panicked once is redelivered and, since its call's
	// outcome is unknown, reconciled by name before it is submitted again.
	onceResult := natstest.WaitLastMsg(t, results, topo.ResultSubject("panic-once"), 30*time.Second)
	if calls, lookups := api.counts(onceName); calls != 2 || lookups < 1 {
		t.Errorf("panic-once: %d calls and %d name lookups, want 2 calls with a lookup before the second", calls, lookups)
	}
	r, err := client.DecodeResult(onceResult.Data)
	if err != nil || r.Key != "panic-once" || r.RunGroupID == "" {
		t.Errorf("panic-once result %+v, %v", r, err)
	}

	// The message that panics every time ends in the DLQ after MaxDeliver
	// deliveries, with its request intact (for redrive) and a bounded reason.
	dead := natstest.WaitLastMsg(t, dlq, topo.DLQSubject("panic-always"), 30*time.Second)
	dl, err := client.DecodeDeadLetter(dead.Data)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Reason != client.ReasonMaxDeliveries || dl.Error.Code != "MaxDeliveriesExceeded" || !bytes.Equal(dl.Request, alwaysBody) {
		t.Errorf("poison dead letter: reason %q code %q, request intact %v", dl.Reason, dl.Error.Code, bytes.Equal(dl.Request, alwaysBody))
	}
	if got := dead.Header.Get(client.HeaderReason); got != string(client.ReasonMaxDeliveries) {
		t.Errorf("dead letter header %s = %q", client.HeaderReason, got)
	}
	if calls, _ := api.counts(alwaysName); calls != 2 {
		t.Errorf("the poison message was called %d times, want 2 (MaxDeliver)", calls)
	}

	select {
	case err := <-errc:
		t.Fatalf("the consumer returned (%v) after recovering panics; it must keep running", err)
	default:
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("consumer Run = %v after cancel", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the consumer did not stop after cancel")
	}

	// The panics were logged (once per panic: first deliveries of both, and
	// the poison message's second), with the stack but never the value.
	text := logs.String()
	if n := strings.Count(text, panicLine); n != 3 {
		t.Errorf("%d panic log lines, want 3\n%s", n, text)
	}
	if !strings.Contains(text, `"stack":"goroutine`) {
		t.Errorf("the panic log line lacks its stack trace")
	}
	secretsOf := []string{panicValueMarker, panicNameMarker, panicDescMarker, panicInputMarker, onceB64, alwaysB64, goodB64, "cannot submit"}
	srv := httptest.NewServer(metrics.NewHandler(reg, nil))
	defer srv.Close()
	scraped := httpGet(t, srv.URL+"/metrics")
	places := map[string]string{
		"logs":                 text,
		"/metrics":             scraped,
		"result bodies":        string(goodResult.Data) + string(onceResult.Data),
		"result headers":       headerText(goodResult.Header) + headerText(onceResult.Header),
		"dead letter headers":  headerText(dead.Header),
		"dead letter error":    dl.Error.Code + " " + dl.Error.Message + " " + dl.Error.Field,
		"dead letter raw body": strings.Replace(string(dead.Data), string(alwaysBody), "", 1),
	}
	for where, s := range places {
		for _, secret := range secretsOf {
			if strings.Contains(strings.ToLower(s), strings.ToLower(secret)) {
				t.Errorf("%s contain %q", where, secret)
			}
		}
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func headerText(h nats.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	return b.String()
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	return string(b)
}
