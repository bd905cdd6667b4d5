package console_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/console"
	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/worker"
	"github.com/omicsq/omicsq/sandbox"
)

// The console runs under the omicsq-console user of docs/security.md's
// permissions block, loaded into a real server: every part of the overview
// reads, the DLQ index fills, a redrive and a resume go through, and the
// server reports no permission violation.
func TestConsoleWithTheDocumentedPermissions(t *testing.T) {
	passwords := map[string]string{"OMICSQ_WORKER_PASSWORD": "pw-worker-1", "OMICSQ_WORKER_BIND_PASSWORD": "pw-bind-2",
		"OMICSQ_PRODUCER_PASSWORD": "pw-producer-3", "OMICSQ_DLQ_OPERATOR_PASSWORD": "pw-dlq-4", "OMICSQ_CONSOLE_PASSWORD": "pw-console-5"}
	for k, v := range passwords {
		t.Setenv(k, v)
	}
	conf := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(conf, []byte(natstest.DocumentedPermissions(t, filepath.Join("..", "..", "docs", "security.md"))), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("the documented configuration does not load: %v", err)
	}
	ns := natstest.Server(t, opts)
	sb, err := sandbox.New(sandbox.Options{SecretID: sandbox.DefaultSecretID, SecretKey: sandbox.DefaultSecretKey, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	sbLn, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sbLn.Close() })

	// A worker that provisions everything, with the tracker (its runs bucket).
	wctx, stopWorker := context.WithCancel(context.Background())
	ready, errc := make(chan worker.Started, 1), make(chan error, 1)
	logs := &logcapture.Buffer{}
	args := []string{"--nats-url", ns.ClientURL(), "--nats-user", "omicsq-worker", "--endpoint", sbLn.Addr(), "--insecure-http",
		"--metrics-addr", "127.0.0.1:0", "--worker-id", "w1", "--api-timeout", "2s", "--retry-initial", "50ms", "--drain-timeout", "5s", "--log-format", "json"}
	go func() {
		errc <- worker.Run(wctx, args, func(k string) string {
			if k == "NATS_PASSWORD" {
				return passwords["OMICSQ_WORKER_PASSWORD"]
			}
			return ""
		}, io.Discard, logs, ready)
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("worker: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not start")
	}
	t.Cleanup(func() { stopWorker(); <-errc })

	perrs := &logcapture.Buffer{}
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("omicsq-console", passwords["OMICSQ_CONSOLE_PASSWORD"]),
		nats.CustomInboxPrefix("_INBOX_console"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			perrs.Write([]byte(err.Error() + "\n"))
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := queue.DefaultTopology()
	cl := client.New(js, client.WithTopology(topo.Topology))
	e := &env{t: t, js: js, cl: cl, topo: topo, sb: sb, audit: &logcapture.Buffer{}}

	// A dead letter of the worker's. The request is published through the
	// console's own connection: its user may publish requests (to redrive).
	sb.ForceError("InvalidParameterValue.InvalidInputJsonFormat")
	p, err := cl.Publish(context.Background(), client.Request{Key: "perm-1", Body: body("perm-1")})
	if err != nil {
		t.Fatal(err)
	}
	if o := e.waitOutcome(p); !o.Dead {
		t.Fatalf("want a dead letter, got %+v", o)
	}
	sb.ForceError("")

	log := slog.New(slog.DiscardHandler)
	index := console.NewIndex(js, topo.Topology, log)
	runs := console.NewRunsIndex(js, topo.RunsBucket, log)
	batches := console.NewBatchesIndex(js, topo.BatchesBucket, log)
	srv, err := console.New(console.Config{JS: js, Client: cl, Topology: topo, Limits: submit.DefaultLimits(),
		RateLimitBucket: ratelimit.DefaultBucket, Index: index, Runs: runs, Batches: batches, Auth: console.Auth{Token: token},
		Audit: slog.New(slog.NewJSONHandler(e.audit, nil)), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { index.Run(ctx, time.Second) })
	wg.Go(func() { runs.Run(ctx) })
	wg.Go(func() { batches.Run(ctx) })
	wg.Go(func() { _ = srv.Serve(ctx, ln) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	e.url = "http://" + ln.Addr().String()
	e.waitIndexed(1)

	_, ov := e.do("GET", "/api/overview", "bearer", nil, nil)
	if strings.Contains(ov, `"errors"`) || !strings.Contains(ov, `"name":"omicsq-worker"`) || !strings.Contains(ov, `"Action":"RunApplication"`) {
		t.Fatalf("overview under the console's permissions: %s", ov)
	}
	if _, page := e.do("GET", "/requests?key=perm-1", "bearer", nil, nil); !strings.Contains(page, "dead_lettered") && !strings.Contains(page, "dead letter") {
		t.Errorf("request page: %s", page)
	}
	tok := e.csrf("bearer")
	resp, page := e.do("POST", "/dlq/redrive", "bearer", url.Values{"seq": {strconv.FormatUint(p.Sequence, 10)}, "all": {"1"}, "csrf": {tok}}, nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "<strong>1</strong> redriven") {
		t.Fatalf("redrive under the console's permissions: %d\n%s", resp.StatusCode, page)
	}
	if o := e.waitOutcome(client.Published{Key: "perm-1", Sequence: p.Sequence + 1}); o.Dead {
		t.Fatalf("the redriven request was dead-lettered again: %+v", o.DeadLetter)
	}

	// Resume clears a pause flag (set here as an administrator would).
	_, ajs := natstest.Connect(t, ns, nats.UserInfo("omicsq-worker", passwords["OMICSQ_WORKER_PASSWORD"]))
	kv, err := ajs.KeyValue(context.Background(), topo.ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(context.Background(), pause.StateKey, []byte(`{"paused":true,"reason":"operator","since":"2026-12-03T00:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := e.do("POST", "/resume", "bearer", url.Values{"csrf": {tok}, "revision": {strconv.FormatUint(rev, 10)}}, nil); resp.StatusCode != 200 {
		t.Fatalf("resume: %d %s", resp.StatusCode, body)
	}
	if en, err := kv.Get(context.Background(), pause.StateKey); err != nil || strings.Contains(string(en.Value()), `"paused":true`) {
		t.Fatalf("the pause flag after resume: %s %v", en.Value(), err)
	}
	// A batch (registered as a producer's enqueue would, here by the
	// administrator): listed, shown, cancelled.
	acl := client.New(ajs, client.WithTopology(topo.Topology))
	if err := acl.RegisterBatch(context.Background(), "perm-batch", []client.BatchMember{{Key: "perm-b1", Location: "s.csv:2"}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, page := e.do("GET", "/batches", "bearer", nil, nil); strings.Contains(page, "perm-batch") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the batches page never listed the batch")
		}
	}
	if _, page := e.do("GET", "/batch?id=perm-batch", "bearer", nil, nil); !strings.Contains(page, "s.csv:2") {
		t.Fatalf("batch page: %s", page)
	}
	if resp, body := e.do("POST", "/batch/cancel", "bearer", url.Values{"id": {"perm-batch"}, "csrf": {tok}}, nil); resp.StatusCode != 200 || !strings.Contains(body, "Cancelled at") {
		t.Fatalf("cancel under the console's permissions: %d %s", resp.StatusCode, body)
	}
	if s := perrs.String(); s != "" {
		t.Fatalf("permission violations:\n%s", s)
	}
}
