package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"github.com/omicsq/omicsq/client"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/sandbox"
)

// testEnv is a real NATS server and a real sandbox API over HTTP.
type testEnv struct {
	t     *testing.T
	ns    *server.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	sb    *sandbox.Server
	sbLn  *sandbox.Listener
	topo  queue.Topology
	store string
}

func newTestEnv(t *testing.T, opts sandbox.Options) *testEnv {
	t.Helper()
	e := &testEnv{t: t, topo: queue.DefaultTopology(), store: t.TempDir()}
	e.startNATS()
	if opts.SecretID == "" {
		opts.SecretID, opts.SecretKey = sandbox.DefaultSecretID, sandbox.DefaultSecretKey
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	sb, err := sandbox.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ln, err := sandbox.Listen(ctx, "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	e.sb, e.sbLn = sb, ln
	return e
}

func (e *testEnv) startNATS() {
	e.t.Helper()
	e.ns = natstest.Server(e.t, &server.Options{StoreDir: e.store})
	e.nc, e.js = natstest.Connect(e.t, e.ns)
	if err := queue.Provision(context.Background(), e.js, e.topo); err != nil {
		e.t.Fatal(err)
	}
}

type runningWorker struct {
	st   Started
	stop func()
	errc chan error
	logs *logcapture.Buffer
}

// startWorker runs the real worker (run) against the env's NATS and sandbox.
func (e *testEnv) startWorker(id string, extra ...string) *runningWorker {
	e.t.Helper()
	args := append([]string{
		"--nats-url", e.ns.ClientURL(), "--endpoint", e.sbLn.Addr(), "--insecure-http",
		"--metrics-addr", "127.0.0.1:0", "--worker-id", id, "--api-timeout", "2s",
		"--retry-initial", "50ms", "--retry-max-interval", "500ms", "--max-attempts", "30",
		"--pause-probe-interval", "200ms", "--drain-timeout", "5s", "--log-level", "debug", "--log-format", "json",
	}, extra...)
	// The Tencent SDK reads credentials from the process environment.
	e.t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	e.t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	return startRun(e.t, args, func(string) string { return "" })
}

func startRun(t *testing.T, args []string, getenv func(string) string) *runningWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Started, 1)
	w := &runningWorker{errc: make(chan error, 1), logs: &logcapture.Buffer{}}
	go func() { w.errc <- Run(ctx, args, getenv, io.Discard, w.logs, ready) }()
	select {
	case w.st = <-ready:
	case err := <-w.errc:
		cancel()
		t.Fatalf("worker exited at start: %v\n%s", err, w.logs.String())
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("worker did not start")
	}
	var once sync.Once
	w.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-w.errc:
				if err != nil {
					t.Errorf("worker returned %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("worker did not stop within 30s")
			}
		})
	}
	t.Cleanup(w.stop)
	return w
}

func (e *testEnv) publish(key string, body []byte) {
	e.t.Helper()
	if _, err := client.New(e.js, client.WithTopology(e.topo.Topology)).Publish(context.Background(), client.Request{Key: key, Body: body}); err != nil {
		e.t.Fatal(err)
	}
}

// outcomes reads every result and dead letter currently stored.
func (e *testEnv) outcomes() (results map[string][]client.Result, dead map[string][]client.DeadLetter) {
	e.t.Helper()
	results, dead = map[string][]client.Result{}, map[string][]client.DeadLetter{}
	for _, s := range []struct {
		stream string
		each   func([]byte)
	}{
		{e.topo.ResultsStream, func(b []byte) {
			r, err := client.DecodeResult(b)
			if err != nil {
				e.t.Fatalf("bad result: %v", err)
			}
			results[r.Key] = append(results[r.Key], r)
		}},
		{e.topo.DLQStream, func(b []byte) {
			d, err := client.DecodeDeadLetter(b)
			if err != nil {
				e.t.Fatalf("bad dead letter: %v", err)
			}
			dead[d.Key] = append(dead[d.Key], d)
		}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := e.js.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			cancel()
			e.t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			cancel()
			e.t.Fatal(err)
		}
		for n := info.NumPending; n > 0; n-- {
			m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				cancel()
				e.t.Fatal(err)
			}
			s.each(m.Data())
		}
		cancel()
	}
	return results, dead
}

// waitSettled waits until n requests have each ended as a result or a dead
// letter, and the requests stream is empty.
func (e *testEnv) waitSettled(n int, timeout time.Duration) (map[string][]client.Result, map[string][]client.DeadLetter) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rs, _ := e.js.Stream(context.Background(), e.topo.ResultsStream)
		ds, _ := e.js.Stream(context.Background(), e.topo.DLQStream)
		qs, _ := e.js.Stream(context.Background(), e.topo.RequestsStream)
		ri, _ := rs.Info(context.Background())
		di, _ := ds.Info(context.Background())
		qi, _ := qs.Info(context.Background())
		if ri != nil && di != nil && qi != nil && int(ri.State.Msgs+di.State.Msgs) >= n && qi.State.Msgs == 0 {
			return e.outcomes()
		}
		if time.Now().After(deadline) {
			var got uint64
			if ri != nil && di != nil {
				got = ri.State.Msgs + di.State.Msgs
			}
			e.t.Fatalf("only %d of %d requests settled within %v", got, n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readExample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "internal", "submit", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
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

func request(name string) []byte {
	input := base64.StdEncoding.EncodeToString([]byte(`{"wf.sample":"` + name + `"}`))
	b, _ := json.Marshal(map[string]any{
		"ApplicationId": "app-sweet-cerulean-frog-569111", "ProjectId": "prj-peaceful-pink-bird-631828",
		"Name": name, "EnvironmentId": "env-05d0g0w2", "InputBase64": input,
		"Option": map[string]any{"FailureMode": "NoNewCalls", "UseCallCache": true},
	})
	return b
}

func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}
