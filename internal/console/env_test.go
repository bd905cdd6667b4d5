package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/console"
	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/worker"
	"github.com/omicsq/omicsq/sandbox"
)

const token = "test-console-token-0123456789"

// env is a real world for the console: an embedded JetStream server, the
// sandbox over HTTP, worker replicas running the real worker, and the
// console served on loopback.
type env struct {
	t     *testing.T
	url   string
	js    jetstream.JetStream
	cl    *client.Client
	topo  queue.Topology
	sb    *sandbox.Server
	audit *logcapture.Buffer
	nats  string
	sbURL string
}

type envOptions struct {
	workers  int
	readOnly bool
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ns := natstest.Server(t, &server.Options{})
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	if err := queue.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	// Runs execute quickly, so the tracker's events reach the pages.
	sb, err := sandbox.New(sandbox.Options{SecretID: sandbox.DefaultSecretID, SecretKey: sandbox.DefaultSecretKey, Seed: 1,
		Execution: sandbox.Execution{Enabled: true, QueueDelay: 100 * time.Millisecond, DurationMin: 300 * time.Millisecond, DurationMax: 600 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sbLn, err := sandbox.Listen(ctx, "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sbLn.Close() })
	e := &env{t: t, js: js, cl: client.New(js, client.WithTopology(topo.Topology)), topo: topo, sb: sb,
		audit: &logcapture.Buffer{}, nats: ns.ClientURL(), sbURL: sbLn.Addr()}
	for i := range o.workers {
		e.startWorker(fmt.Sprintf("w%d", i+1))
	}
	e.startConsole(o.readOnly)
	return e
}

func (e *env) startWorker(id string) {
	e.t.Helper()
	args := []string{"--nats-url", e.nats, "--endpoint", e.sbURL, "--insecure-http", "--metrics-addr", "127.0.0.1:0",
		"--worker-id", id, "--api-timeout", "2s", "--retry-initial", "50ms", "--retry-max-interval", "500ms",
		"--drain-timeout", "5s", "--log-format", "json", "--tracker-interval", "200ms"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan worker.Started, 1)
	errc := make(chan error, 1)
	logs := &logcapture.Buffer{}
	go func() { errc <- worker.Run(ctx, args, func(string) string { return "" }, io.Discard, logs, ready) }()
	select {
	case <-ready:
	case err := <-errc:
		cancel()
		e.t.Fatalf("worker %s exited at start: %v\n%s", id, err, logs.String())
	case <-time.After(20 * time.Second):
		cancel()
		e.t.Fatalf("worker %s did not start", id)
	}
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(30 * time.Second):
			e.t.Errorf("worker %s did not stop", id)
		}
	})
}

func (e *env) startConsole(readOnly bool) {
	e.t.Helper()
	log := slog.New(slog.DiscardHandler)
	index := console.NewIndex(e.js, e.topo.Topology, log)
	runs := console.NewRunsIndex(e.js, e.topo.RunsBucket, log)
	batches := console.NewBatchesIndex(e.js, e.topo.BatchesBucket, log)
	srv, err := console.New(console.Config{JS: e.js, Client: e.cl, Topology: e.topo, Limits: submit.DefaultLimits(),
		RateLimitBucket: ratelimit.DefaultBucket, Index: index, Runs: runs, Batches: batches, Auth: console.Auth{Token: token},
		ReadOnly: readOnly, Audit: slog.New(slog.NewJSONHandler(e.audit, nil)), Log: log})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { index.Run(ctx, 500*time.Millisecond) })
	wg.Go(func() { runs.Run(ctx) })
	wg.Go(func() { batches.Run(ctx) })
	wg.Go(func() { _ = srv.Serve(ctx, ln) })
	e.t.Cleanup(func() { cancel(); wg.Wait() })
	e.url = "http://" + ln.Addr().String()
}

func body(name string) []byte {
	return fmt.Appendf(nil, `{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":%q,"InputBase64":"e30=","Description":"patient P-%s"}`, name, name)
}

func (e *env) publish(key string) client.Published {
	e.t.Helper()
	p, err := e.cl.Publish(context.Background(), client.Request{Key: key, Body: body(key)})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// waitOutcome waits for the key's published request to end (result or
// dead letter).
func (e *env) waitOutcome(p client.Published) client.Outcome {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, err := e.cl.WaitResult(ctx, p)
	if err != nil {
		e.t.Fatalf("no outcome for %s: %v", p.Key, err)
	}
	return o
}

// deadLetter makes key's request end as a dead letter: the sandbox
// refuses every call with a permanent error while it is published.
func (e *env) deadLetter(key string) client.Outcome {
	e.t.Helper()
	e.sb.ForceError("InvalidParameterValue.InvalidInputJsonFormat")
	defer e.sb.ForceError("")
	o := e.waitOutcome(e.publish(key))
	if !o.Dead {
		e.t.Fatalf("%s: want a dead letter, got %+v", key, o)
	}
	return o
}

// groupsNamed counts the sandbox's run groups named name: its own
// registry, not the client's view.
func (e *env) groupsNamed(name string) int {
	n := 0
	for _, g := range e.sb.RunGroups() {
		if g.Name == name {
			n++
		}
	}
	return n
}

// do sends an HTTP request to the console; auth is "bearer", "basic",
// "wrong" or "".
func (e *env) do(method, path, auth string, form url.Values, header http.Header) (*http.Response, string) {
	e.t.Helper()
	var rd io.Reader
	if form != nil {
		rd = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	switch auth {
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+token)
	case "basic":
		req.SetBasicAuth("alice", token)
	case "wrong":
		req.Header.Set("Authorization", "Bearer not-the-token")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// csrf reads the page's CSRF token as the browser would.
func (e *env) csrf(auth string) string {
	e.t.Helper()
	_, page := e.do("GET", "/", auth, nil, nil)
	_, rest, ok := strings.Cut(page, `<meta name="csrf-token" content="`)
	if !ok {
		e.t.Fatalf("no CSRF token on the overview page:\n%s", page)
	}
	tok, _, _ := strings.Cut(rest, `"`)
	return tok
}

// waitIndexed waits until the console's DLQ index holds n dead letters.
func (e *env) waitIndexed(n int) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		_, b := e.do("GET", "/api/dlq?size=0", "bearer", nil, nil)
		var got struct {
			Total int  `json:"total"`
			Ready bool `json:"ready"`
		}
		if json.Unmarshal([]byte(b), &got) == nil && got.Ready && got.Total == n {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("the console's index did not reach %d dead letters", n)
}
