package rerun_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/worker"
	"github.com/omicsq/omicsq/sandbox"
)

// A worker started with --auto-retry 1 retries each failed group whose
// message matches once (the sandbox's registry: one group from each
// original, none from the retries), and the key's status is the retry's.
func TestWorkerAutoRetriesOncePerKey(t *testing.T) {
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	sb, err := sandbox.New(sandbox.Options{Seed: 5, Execution: sandbox.Execution{Enabled: true,
		DurationMin: 200 * time.Millisecond, DurationMax: 500 * time.Millisecond, FailureRate: 1, FailureMessages: []string{"exit 137: OOMKilled"}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	logs, metricsAddr := startWorker(t, ns.ClientURL(), ln.Addr(), "--auto-retry", "1", "--auto-retry-messages", "OOMKilled")

	ctx := t.Context()
	c := client.New(js)
	const n = 10
	for i := range n {
		body := fmt.Sprintf(`{"ApplicationId":"app-1","Name":"auto-%02d","EnvironmentId":"env-1","InputBase64":"e30K"}`, i)
		r, err := client.NewRequest([]byte(body), fmt.Sprintf("auto-%02d", i), 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Publish(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < n; {
		key := fmt.Sprintf("auto-%02d", i)
		st, err := c.State(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != nil && st.Status.Terminal && st.Status.RetryOf != "" {
			if st.Result == nil || st.Status.RetryOf != st.Result.RunGroupID {
				t.Fatalf("%s: the retried group %s is a retry of %s, its result names %+v", key, st.Status.RunGroupID, st.Status.RetryOf, st.Result)
			}
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no terminal status of a retry (%+v)\n%s", key, st.Status, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every retry group fails too; the policy refuses each (the limit).
	var metricsText string
	for deadline := time.Now().Add(20 * time.Second); ; {
		metricsText = scrape(t, metricsAddr)
		if strings.Contains(metricsText, `omicsq_auto_retries_total{outcome="refused"} `+strconv.Itoa(n)+"\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy did not refuse the %d retried groups:\n%s", n, regexp.MustCompile(`omicsq_auto_retries_total\{.*`).FindAllString(metricsText, -1))
		}
		time.Sleep(200 * time.Millisecond)
	}
	created := regexp.MustCompile(`omicsq_auto_retries_total\{outcome="(created|found)"\} (\d+)`).FindAllStringSubmatch(metricsText, -1)
	sum := 0
	for _, m := range created {
		v, _ := strconv.Atoi(m[2])
		sum += v
	}
	if sum != n {
		t.Errorf("/metrics counts %d retries that created a group, want %d", sum, n)
	}
	retries := sb.Retries()
	total := 0
	for src, ids := range retries {
		total += len(ids)
		if len(ids) != 1 {
			t.Errorf("%s was retried %d times", src, len(ids))
		}
	}
	if total != n {
		t.Fatalf("%d retry groups for %d failed requests, want one each: %v", total, n, retries)
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func startWorker(t *testing.T, natsURL, endpoint string, extra ...string) (*logcapture.Buffer, string) {
	t.Helper()
	t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	ctx, cancel := context.WithCancel(context.Background())
	ready, done, logs := make(chan worker.Started, 1), make(chan struct{}), &logcapture.Buffer{}
	var runErr error
	args := append([]string{"--nats-url", natsURL, "--endpoint", endpoint, "--insecure-http", "--metrics-addr", "127.0.0.1:0",
		"--worker-id", "e2e", "--tracker-interval", "200ms", "--log-level", "warn"}, extra...)
	go func() {
		defer close(done)
		runErr = worker.Run(ctx, args, func(string) string { return "" }, io.Discard, logs, ready)
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
		return logs, st.MetricsAddr
	case <-done:
		t.Fatalf("worker exited: %v\n%s", runErr, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not start")
	}
	return nil, ""
}
