package rerun

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/tracker"
	"github.com/omicsq/omicsq/metrics"
	"github.com/omicsq/omicsq/sandbox"
)

const failMessage = "OOMKilled: exit 137"

// failing runs every run for 200 ms and fails it with failMessage.
var failing = sandbox.Execution{Enabled: true, QueueDelay: 50 * time.Millisecond, DurationMin: 200 * time.Millisecond,
	FailureRate: 1, FailureMessages: []string{failMessage}}

// env is an embedded JetStream server with omicsq's topology, the sandbox
// over real HTTP, and a running tracker following what is submitted.
type env struct {
	t    *testing.T
	js   jetstream.JetStream
	topo queue.Topology
	sb   *sandbox.Server
	api  *submit.Client
	cl   *client.Client
	runs jetstream.KeyValue
}

func newEnv(t *testing.T, exec sandbox.Execution) *env {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	ctx := t.Context()
	if err := queue.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	sb, err := sandbox.New(sandbox.Options{Execution: exec, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	api, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: ln.Addr(), InsecureHTTP: true,
		Timeout: 3 * time.Second, Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	runs, err := js.KeyValue(ctx, topo.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, js: js, topo: topo, sb: sb, api: api, cl: client.New(js, client.WithTopology(topo.Topology)), runs: runs}
	e.startTracker()
	return e
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startTracker runs the real tracker (one replica) until the test ends.
func (e *env) startTracker() {
	m, err := metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	tr, err := tracker.New(tracker.Config{JS: e.js, Topology: e.topo, API: e.api, Interval: 100 * time.Millisecond,
		LeaseTTL: time.Second, Worker: "w1", Metrics: m, Log: quiet()})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tr.Run(ctx)
	}()
	e.t.Cleanup(func() { cancel(); <-done })
}

// submit creates a run group for key as the worker would, and publishes
// its result, so the tracker follows it.
func (e *env) submit(key string) string {
	e.t.Helper()
	req := &submit.RunApplicationRequest{ApplicationId: "app-sweet-cerulean-frog-569111", Name: "rerun-" + key,
		EnvironmentId: "env-quiet-amber-owl-104233", InputBase64: new("e30K"),
		Option: &submit.RunOption{FailureMode: new("NoNewCalls")}}
	resp, err := e.api.RunApplication(e.t.Context(), req)
	if err != nil {
		e.t.Fatalf("RunApplication: %v", err)
	}
	r := client.Result{Key: key, RunGroupID: resp.RunGroupId, Attempts: 1, SubmittedAt: time.Now().UTC(), Worker: "w"}
	if _, err := queue.PublishResult(e.t.Context(), e.js, e.topo, r); err != nil {
		e.t.Fatal(err)
	}
	return resp.RunGroupId
}

// entry reads key's runs entry.
func (e *env) entry(key string) (tracker.Entry, bool) {
	kve, err := e.runs.Get(e.t.Context(), client.KeyToken(key))
	if err != nil {
		return tracker.Entry{}, false
	}
	var en tracker.Entry
	if err := json.Unmarshal(kve.Value(), &en); err != nil {
		e.t.Fatal(err)
	}
	return en, true
}

// waitEnded waits until the tracker recorded key's group group as ended.
func (e *env) waitEnded(key, group string) tracker.Entry {
	e.t.Helper()
	var en tracker.Entry
	waitFor(e.t, "the tracker to see "+group+" end", 20*time.Second, func() bool {
		var ok bool
		en, ok = e.entry(key)
		return ok && en.RunGroupID == group && en.Terminal
	})
	return en
}

func (e *env) retrier(name string, o func(*Config)) *Retrier {
	e.t.Helper()
	cfg := Config{JS: e.js, Topology: e.topo, API: e.api, Horizon: 10 * time.Second,
		LookupInitial: 100 * time.Millisecond, LookupMax: 500 * time.Millisecond, Holder: name, Log: quiet()}
	if o != nil {
		o(&cfg)
	}
	r, err := New(e.t.Context(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// retriesOf is what the sandbox's own registry says RetryRuns created from
// group.
func (e *env) retriesOf(group string) []string { return e.sb.Retries()[group] }

func (e *env) totalRetries() int {
	n := 0
	for _, ids := range e.sb.Retries() {
		n += len(ids)
	}
	return n
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
