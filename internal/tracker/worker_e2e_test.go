package tracker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/worker"
	"github.com/omicsq/omicsq/sandbox"
)

// The worker runs the tracker by default: requests published to a real
// worker process (in-process, on an embedded JetStream server, against the
// sandbox over HTTP with execution on) end with a terminal status event,
// which client.LatestStatus reads, and /metrics shows the tracker leading.
func TestWorkerRunsTheTracker(t *testing.T) {
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	sb, err := sandbox.New(sandbox.Options{Seed: 3, Execution: sandbox.Execution{Enabled: true,
		DurationMin: 200 * time.Millisecond, DurationMax: time.Second, FailureRate: 0.3, FailureMessages: []string{"exit 1"}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	st, logs := startWorker(t, ns.ClientURL(), ln.Addr())

	ctx := context.Background()
	c := client.New(js)
	var keys []string
	for i := range 20 {
		key := fmt.Sprintf("e2e-%02d", i)
		body := fmt.Sprintf(`{"ApplicationId":"app-1","Name":"e2e-%02d","EnvironmentId":"env-1","InputBase64":"e30K"}`, i)
		r, err := client.NewRequest([]byte(body), key, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Publish(ctx, r); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	failed := 0
	for _, key := range keys {
		e := waitTerminalStatus(t, c, key, logs)
		if client.IsFailedStatus(e.Status) {
			failed++
			if e.ErrorMessage != "exit 1" {
				t.Errorf("%s failed with %q", key, e.ErrorMessage)
			}
		}
	}
	resp, err := http.Get("http://" + st.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"omicsq_tracker_enabled 1", "omicsq_tracker_leader 1", `omicsq_tracker_events_total{kind="group"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	t.Logf("20 requests through a worker: all terminal, %d failed", failed)
}

// startWorker runs a worker with default settings (the tracker on) until
// the test ends.
func startWorker(t *testing.T, natsURL, endpoint string) (worker.Started, *logcapture.Buffer) {
	t.Helper()
	// The SDK's credential chain reads the process environment.
	t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	ctx, cancel := context.WithCancel(context.Background())
	ready, done, logs := make(chan worker.Started, 1), make(chan struct{}), &logcapture.Buffer{}
	var runErr error
	go func() {
		defer close(done)
		runErr = worker.Run(ctx, []string{"--nats-url", natsURL, "--endpoint", endpoint, "--insecure-http",
			"--metrics-addr", "127.0.0.1:0", "--worker-id", "e2e", "--tracker-interval", "200ms", "--log-level", "warn"},
			func(string) string { return "" }, io.Discard, logs, ready)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("worker: %v", runErr)
		}
	})
	select {
	case st := <-ready:
		return st, logs
	case <-done:
		t.Fatalf("worker exited: %v\n%s", runErr, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not start")
	}
	return worker.Started{}, nil
}

// waitTerminalStatus waits for key's terminal group event, as a LIMS would
// read it.
func waitTerminalStatus(t *testing.T, c *client.Client, key string, logs *logcapture.Buffer) client.StatusEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		e, ok, err := c.LatestStatus(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if ok && e.Terminal {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no terminal event (latest %+v)\n%s", key, e, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
