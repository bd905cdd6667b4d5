package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	omicsqworker "github.com/omicsq/omicsq/internal/worker"
	"github.com/omicsq/omicsq/sandbox"
)

// startRealWorker runs the worker (the run tracker on) against the sandbox
// at endpoint until the test ends; extra flags are added.
func startRealWorker(t *testing.T, natsURL, endpoint string, extra ...string) *logcapture.Buffer {
	t.Helper()
	t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	ctx, cancel := context.WithCancel(context.Background())
	ready, done, logs := make(chan omicsqworker.Started, 1), make(chan struct{}), &logcapture.Buffer{}
	var runErr error
	args := append([]string{"--nats-url", natsURL, "--endpoint", endpoint, "--insecure-http", "--worker-id", "e2e",
		"--tracker-interval", "200ms", "--log-level", "warn", "--metrics-addr", "127.0.0.1:0"}, extra...)
	go func() {
		defer close(done)
		runErr = omicsqworker.Run(ctx, args, func(string) string { return "" }, io.Discard, logs, ready)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("worker: %v", runErr)
		}
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("worker exited: %v\n%s", runErr, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not start")
	}
	return logs
}

// A sample sheet through enqueue and a real worker, cancelled while its
// first requests run and the rest wait for the rate limit: the waiting
// requests are dead-lettered batch_cancelled without a RunApplication call
// (the sandbox never saw their Names), every group that was created is
// Terminated in the sandbox, and the batch's completion event counts all
// of them cancelled; batch show lists every row.
func TestCancelASheetThroughTheWorker(t *testing.T) {
	e := newEnv(t, false)
	sb, err := sandbox.New(sandbox.Options{Seed: 5, Execution: sandbox.Execution{Enabled: true, QueueDelay: 100 * time.Millisecond,
		DurationMin: time.Hour, DurationMax: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	// One request at a time, each RunApplication taking 400 ms: the sheet
	// takes seconds to submit, and the cancel lands early.
	if err := sb.SetFaults(sandbox.Faults{Latency: 400 * time.Millisecond, LatencyP: 1, Actions: []string{"RunApplication"}}); err != nil {
		t.Fatal(err)
	}
	logs := startRealWorker(t, e.URL, ln.Addr(), "--concurrency", "1")

	const rows, id = 10, "e2e-sheet"
	var sheet strings.Builder
	for i := range rows {
		fmt.Fprintf(&sheet, `{"key":"lims-%02d","request":{"ApplicationId":"app-1","Name":"batch-e2e-%02d","EnvironmentId":"env-1","InputBase64":"e30K"}}`+"\n", i, i)
	}
	path := filepath.Join(t.TempDir(), "sheet.jsonl")
	if err := os.WriteFile(path, []byte(sheet.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the batches bucket", 10*time.Second, func() bool { _, err := e.JS.KeyValue(t.Context(), e.Topo.BatchesBucket); return err == nil })
	res := e.run("", "--batch", id, "--quiet", path)
	if res.Code != exitOK || !strings.Contains(res.Stderr, "batch "+id+": 10 members registered") {
		t.Fatalf("enqueue: exit %d\n%s", res.Code, res.Stderr)
	}
	cl := client.New(e.JS, client.WithTopology(e.Topo.Topology))
	waitUntil(t, "two members submitted", 15*time.Second, func() bool {
		_, ms, _ := cl.Batch(t.Context(), id)
		return client.CountBatch(ms).Submitted >= 2
	})
	start := time.Now()
	if res := e.run("", "batch", "cancel", id); res.Code != exitOK {
		t.Fatalf("cancel: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	status, err := e.JS.Stream(t.Context(), e.Topo.StatusStream)
	if err != nil {
		t.Fatal(err)
	}
	m := natstest.WaitLastMsg(t, status, e.Topo.BatchSubject(id), 30*time.Second)
	var ev client.BatchCompleted
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Members != rows || ev.Cancelled != rows {
		t.Errorf("completion %+v, want %d cancelled\n%s", ev, rows, logs.String())
	}

	submitted := map[string]bool{}
	for _, g := range sb.RunGroups() {
		submitted[g.Name] = true
		if g.Status != sandbox.StatusTerminated {
			t.Errorf("group %s is %s, want Terminated", g.RunGroupId, g.Status)
		}
	}
	refused := 0
	for _, dl := range e.Messages(e.Topo.DLQStream) {
		d, err := client.DecodeDeadLetter(dl.Data)
		if err != nil {
			t.Fatal(err)
		}
		if d.Reason != client.ReasonBatchCancelled || dl.Header.Get(client.HeaderBatch) != id || d.Batch != id || d.Attempts != 0 {
			t.Errorf("dead letter %+v (header %q)", d, dl.Header.Get(client.HeaderBatch))
		}
		if submitted["batch-e2e-"+strings.TrimPrefix(d.Key, "lims-")] {
			t.Errorf("%s was dead-lettered batch_cancelled after the sandbox saw its Name", d.Key)
		}
		refused++
	}
	results := e.Messages(e.Topo.ResultsStream)
	for _, r := range results {
		if r.Header.Get(client.HeaderBatch) != id {
			t.Errorf("result without the batch header: %v", r.Header)
		}
	}
	calls := sb.Stats().Actions["RunApplication"].Calls["success"]
	t.Logf("cancelled with %d submitted, %d refused; completion %v after the cancel; RunApplication successes %d, TerminateRunGroup %v",
		len(results), refused, time.Since(start).Round(time.Millisecond), calls, sb.Stats().Actions["TerminateRunGroup"].Calls)
	if refused == 0 || len(results)+refused != rows || int(calls) != len(results) || len(submitted) != len(results) {
		t.Errorf("%d results + %d refused, %d calls, %d groups: want %d requests, one group per result", len(results), refused, calls, len(submitted), rows)
	}

	res = e.run("", "batch", "show", id)
	lines := res.Lines()
	if res.Code != exitOK || len(lines) != 3+rows || !strings.Contains(lines[1], fmt.Sprintf("%d cancelled", rows)) {
		t.Fatalf("batch show: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, l := range lines[3:] {
		f := strings.Fields(l)
		if len(f) != 4 || !strings.HasPrefix(f[0], path+":") || (f[3] != "terminated" && f[3] != "dead_lettered:batch_cancelled") {
			t.Errorf("member line %q", l)
		}
	}
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
