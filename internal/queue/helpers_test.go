package queue

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// testProcessor provisions topo on a fresh embedded JetStream server and
// returns a Processor named w1 over api, with no rate limit, together with
// the JetStream handle and the metrics registry it reports to.
func testProcessor(t *testing.T, topo Topology, api API, log *slog.Logger) (*Processor, jetstream.JetStream, *prometheus.Registry) {
	t.Helper()
	ctx := context.Background()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	if err := Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	led, err := ledger.Open(ctx, js, topo.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	controlKV, err := js.KeyValue(ctx, topo.ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.BuildInfo{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	policy := submission.DefaultPolicy()
	policy.MaxDeliveries = topo.MaxDeliver
	policy.Horizon = 3 * time.Second // the sandbox here shows new groups at once
	return &Processor{
		Ledger: led, Outbox: &JetStreamOutbox{JS: js, Topology: topo}, API: api,
		RunLimiter: noLimit{}, DescribeLimiter: noLimit{},
		Pause:  pause.New(controlKV, pause.Config{Worker: "w1", Logger: log}),
		Policy: policy, Limits: submit.DefaultLimits(), CallTimeout: 5 * time.Second, LeaseTTL: 3 * time.Second,
		Metrics: m, Log: log, Worker: "w1",
	}, js, reg
}
