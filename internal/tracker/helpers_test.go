package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
	"github.com/omicsq/omicsq/sandbox"
)

// env is a real embedded JetStream server with omicsq's topology, and the
// real sandbox Omics API over HTTP with the worker's client for it.
type env struct {
	t    testing.TB
	ns   *server.Server
	js   jetstream.JetStream
	topo queue.Topology
	sb   *sandbox.Server
	api  *submit.Client
	// submitted is every request: key -> run group, in submission order.
	mu        sync.Mutex
	keys      []string
	groupOf   map[string]string
	batchRows map[string]int
}

func newEnv(t testing.TB, exec sandbox.Execution) *env {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	topo := queue.DefaultTopology()
	if err := queue.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	sb, err := sandbox.New(sandbox.Options{Execution: exec, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	api, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: ln.Addr(), InsecureHTTP: true,
		Timeout: 5 * time.Second, Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ns: ns, js: js, topo: topo, sb: sb, api: api, groupOf: map[string]string{}, batchRows: map[string]int{}}
}

// submit creates a run group in the sandbox (rows > 0: a table batch of
// that many rows; project "" the default one) and returns its key.
func (e *env) submit(ctx context.Context, i, rows int, project string) string {
	e.t.Helper()
	key := fmt.Sprintf("sample-%04d", i)
	req := &submit.RunApplicationRequest{ApplicationId: "app-sweet-cerulean-frog-569111", Name: "tracker-" + key,
		EnvironmentId: "env-quiet-amber-owl-104233", InputBase64: new("e30K")}
	if project != "" {
		req.ProjectId = &project
	}
	if rows > 0 {
		req.TableId = new("tab-brisk-olive-yak-300001")
		for r := range rows {
			req.TableRowUuids = append(req.TableRowUuids, fmt.Sprintf("row-%04d-%d", i, r))
		}
	}
	resp, err := e.api.RunApplication(ctx, req)
	if err != nil {
		e.t.Fatalf("RunApplication: %v", err)
	}
	e.mu.Lock()
	e.keys = append(e.keys, key)
	e.groupOf[key] = resp.RunGroupId
	e.batchRows[key] = rows
	e.mu.Unlock()
	return key
}

// publishResults publishes the result of every request submitted, as the
// worker does.
func (e *env) publishResults(ctx context.Context) {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range e.keys {
		r := client.Result{Key: k, RunGroupID: e.groupOf[k], Attempts: 1, SubmittedAt: time.Now().UTC(), Worker: "w"}
		if _, err := queue.PublishResult(ctx, e.js, e.topo, r); err != nil {
			e.t.Fatal(err)
		}
	}
}

// trackerOpts tweak startTracker.
type trackerOpts struct {
	worker   string
	rate     float64
	share    float64
	interval time.Duration
	ttl      time.Duration
	ledger   LedgerReader
	projects []string
}

// running is a tracker started by startTracker, on its own connection.
type running struct {
	*Tracker
	reg    *prometheus.Registry
	conn   interface{ Close() }
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the tracker gracefully and waits for it.
func (r *running) stop() {
	r.cancel()
	<-r.done
}

// crash closes the tracker's NATS connection under it, as a killed process
// would leave things: no lease release, writes cut off wherever they were.
func (r *running) crash() {
	r.conn.Close()
	r.cancel()
	<-r.done
}

func (e *env) startTracker(o trackerOpts) *running {
	e.t.Helper()
	nc, js := natstest.Connect(e.t, e.ns)
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.BuildInfo{Version: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	tr, err := New(Config{JS: js, Topology: e.topo, API: e.api, Ledger: o.ledger, Projects: o.projects,
		Rate: o.rate, Share: o.share, Interval: or(o.interval, 200*time.Millisecond), LeaseTTL: or(o.ttl, time.Second),
		Worker: or(o.worker, "w1"), Metrics: m, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Tracker: tr, reg: reg, conn: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		_ = tr.Run(ctx)
	}()
	e.t.Cleanup(r.stop)
	return r
}

// stored is one event as the status stream holds it.
type stored struct {
	seq     uint64
	subject string
	ev      client.StatusEvent
}

// events reads the whole status stream.
func (e *env) events(ctx context.Context) []stored {
	e.t.Helper()
	s, err := e.js.Stream(ctx, e.topo.StatusStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []stored
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		var ev client.StatusEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.t.Fatalf("event %d: %v", seq, err)
		}
		out = append(out, stored{seq: seq, subject: m.Subject, ev: ev})
	}
	return out
}

// waitTerminal waits until every submitted key has a terminal group event
// and returns the stream's events.
func (e *env) waitTerminal(ctx context.Context, timeout time.Duration) []stored {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := e.events(ctx)
		done := map[string]bool{}
		for _, s := range evs {
			if s.ev.RunUUID == "" && s.ev.Terminal {
				done[s.ev.Key] = true
			}
		}
		e.mu.Lock()
		n, missing := len(e.keys), 0
		for _, k := range e.keys {
			if !done[k] {
				missing++
			}
		}
		e.mu.Unlock()
		if missing == 0 {
			return evs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("after %v %d of %d requests have no terminal event (%d events)", timeout, missing, n, len(evs))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leader returns the one tracker among rs that leads, waiting for one.
func leader(t testing.TB, rs ...*running) *running {
	t.Helper()
	var found *running
	waitFor(t, "a tracker leader", 10*time.Second, func() bool {
		n := 0
		for _, r := range rs {
			if r.Stats().Leader {
				found = r
				n++
			}
		}
		return n == 1
	})
	return found
}

// metricValue returns the value of the series name{label=value} (a counter
// or gauge; no labels: the only series) from r's registry.
func metricValue(t testing.TB, r *running, name string, labelPairs ...string) float64 {
	t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labelPairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labelPairs[i] && l.GetValue() == labelPairs[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s%v", name, labelPairs)
	return 0
}
