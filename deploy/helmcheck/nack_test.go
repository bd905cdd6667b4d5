package helmcheck

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
)

// TestNACKMatchesProvision renders the NACK resources and compares them with what the worker
// itself creates (queue.Provision, and the rate limiter's bucket), read back from a real
// JetStream server: every stream, consumer and KV bucket the code provisions has a NACK
// resource with the same settings, and the chart renders nothing the code does not create. A
// setting changed on one side only, or a bucket added to internal/queue without its line in
// templates/nack.yaml, fails here.
func TestNACKMatchesProvision(t *testing.T) {
	helmBinary(t)
	for _, tc := range []struct {
		name    string
		tracker bool
		sets    []string
	}{
		{name: "tracker", tracker: true},
		{name: "no-tracker", sets: []string{"config.OMICSQ_TRACKER=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets := append([]string{"jetstream.provision=false", "nack.enabled=true", "jetstream.streamReplicas=1"}, tc.sets...)
			objs := render(t, []string{ciValues("default-values.yaml")}, sets...)
			topo := queue.DefaultTopology()
			topo.Tracker = tc.tracker
			js := provisioned(t, topo)
			ctx := context.Background()
			compareStreams(ctx, t, js, find[*nackStream](objs))
			compareConsumers(ctx, t, js, find[*nackConsumer](objs))
			compareBuckets(ctx, t, js, find[*nackKeyValue](objs))
		})
	}
}

// provisioned returns a JetStream server holding what a worker with topo creates.
func provisioned(t *testing.T, topo queue.Topology) jetstream.JetStream {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	g, err := ratelimit.NewGlobal(ctx, js, ratelimit.Key("AKIDcheck", "ap-guangzhou", "RunApplication"),
		ratelimit.Config{Limit: 20, Window: time.Second, Burst: 1, Replicas: topo.Replicas, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	_ = g.Close()
	return js
}

var storageName = map[jetstream.StorageType]string{jetstream.FileStorage: "file", jetstream.MemoryStorage: "memory"}

// diff collects the settings that differ.
type diff []string

func (d *diff) check(field string, chart, code any) {
	if fmt.Sprint(chart) != fmt.Sprint(code) {
		*d = append(*d, fmt.Sprintf("%s: chart %v, worker %v", field, chart, code))
	}
}

func (d diff) report(t *testing.T, what string) {
	t.Helper()
	if len(d) > 0 {
		t.Errorf("NACK %s differs from what the worker provisions:\n  %s", what, strings.Join(d, "\n  "))
	}
}

// dur parses a NACK duration; "" is zero (NACK leaves the server's default).
func dur(t *testing.T, s string) time.Duration {
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Errorf("duration %q: %v", s, err)
	}
	return d
}

// orDefault is v, or def when v is the zero value (the server's default applies).
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func compareStreams(ctx context.Context, t *testing.T, js jetstream.JetStream, chart []*nackStream) {
	byName := map[string]*nackStream{}
	for _, s := range chart {
		byName[s.Spec.Name] = s
	}
	seen := map[string]bool{}
	for name := range js.StreamNames(ctx).Name() {
		if strings.HasPrefix(name, "KV_") {
			continue // a bucket's stream: compared as a KeyValue
		}
		seen[name] = true
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		n, ok := byName[name]
		if !ok {
			t.Errorf("the worker provisions stream %s; templates/nack.yaml renders no Stream for it", name)
			continue
		}
		s := n.Spec
		var d diff
		d.check("description", s.Description, c.Description)
		d.check("subjects", s.Subjects, c.Subjects)
		d.check("retention", s.Retention, map[jetstream.RetentionPolicy]string{jetstream.LimitsPolicy: "limits",
			jetstream.InterestPolicy: "interest", jetstream.WorkQueuePolicy: "workqueue"}[c.Retention])
		d.check("discard", orDefault(s.Discard, "old"), map[jetstream.DiscardPolicy]string{jetstream.DiscardOld: "old", jetstream.DiscardNew: "new"}[c.Discard])
		d.check("discardPerSubject", s.DiscardPerSubject, c.DiscardNewPerSubject)
		d.check("maxMsgsPerSubject", s.MaxMsgsPerSubject, max(c.MaxMsgsPerSubject, 0))
		d.check("maxAge", dur(t, s.MaxAge), c.MaxAge)
		d.check("maxMsgSize", orDefault(s.MaxMsgSize, -1), c.MaxMsgSize)
		d.check("storage", s.Storage, storageName[c.Storage])
		d.check("replicas", s.Replicas, c.Replicas)
		d.check("duplicateWindow", orDefault(dur(t, s.DuplicateWindow), 2*time.Minute), c.Duplicates)
		d.check("allowDirect", s.AllowDirect, c.AllowDirect)
		d.report(t, "Stream "+name)
	}
	for name := range byName {
		if !seen[name] {
			t.Errorf("templates/nack.yaml renders Stream %s, which the worker does not provision", name)
		}
	}
}

func compareConsumers(ctx context.Context, t *testing.T, js jetstream.JetStream, chart []*nackConsumer) {
	byName := map[string]*nackConsumer{}
	for _, c := range chart {
		byName[c.Spec.StreamName+"/"+c.Spec.DurableName] = c
	}
	seen := map[string]bool{}
	for stream := range js.StreamNames(ctx).Name() {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		for info := range st.ListConsumers(ctx).Info() {
			if info.Config.Durable == "" {
				continue // a watch's ephemeral consumer (the rate limiter's KV watch), not provisioned
			}
			id := stream + "/" + info.Name
			seen[id] = true
			n, ok := byName[id]
			if !ok {
				t.Errorf("the worker provisions consumer %s; templates/nack.yaml renders no Consumer for it", id)
				continue
			}
			s, c := n.Spec, info.Config
			var d diff
			d.check("description", s.Description, c.Description)
			d.check("deliverPolicy", s.DeliverPolicy, map[jetstream.DeliverPolicy]string{jetstream.DeliverAllPolicy: "all", jetstream.DeliverNewPolicy: "new", jetstream.DeliverLastPolicy: "last"}[c.DeliverPolicy])
			d.check("ackPolicy", s.AckPolicy, map[jetstream.AckPolicy]string{jetstream.AckExplicitPolicy: "explicit", jetstream.AckAllPolicy: "all", jetstream.AckNonePolicy: "none"}[c.AckPolicy])
			d.check("ackWait", orDefault(dur(t, s.AckWait), 30*time.Second), c.AckWait)
			d.check("maxDeliver", orDefault(s.MaxDeliver, -1), c.MaxDeliver)
			d.check("maxAckPending", orDefault(s.MaxAckPending, 1000), c.MaxAckPending)
			d.check("maxWaiting", orDefault(s.MaxWaiting, 512), orDefault(c.MaxWaiting, 512))
			d.check("filterSubject", s.FilterSubject, c.FilterSubject)
			d.check("replicas", s.Replicas, orDefault(c.Replicas, st.CachedInfo().Config.Replicas))
			d.report(t, "Consumer "+id)
		}
	}
	for id := range byName {
		if !seen[id] {
			t.Errorf("templates/nack.yaml renders Consumer %s, which the worker does not provision", id)
		}
	}
}

func compareBuckets(ctx context.Context, t *testing.T, js jetstream.JetStream, chart []*nackKeyValue) {
	byName := map[string]*nackKeyValue{}
	for _, kv := range chart {
		byName[kv.Spec.Bucket] = kv
	}
	var names []string
	for name := range js.KeyValueStoreNames(ctx).Name() {
		names = append(names, name)
	}
	if len(names) < 4 {
		t.Fatalf("the worker provisioned only the buckets %v", names)
	}
	for _, name := range names {
		n, ok := byName[name]
		if !ok {
			t.Errorf("the worker provisions KV bucket %s; templates/nack.yaml renders no KeyValue for it (add a line to $more)", name)
			continue
		}
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config
		s := n.Spec
		var d diff
		d.check("description", s.Description, c.Description)
		d.check("history", s.History, st.History())
		d.check("ttl", dur(t, s.TTL), st.TTL())
		d.check("storage", s.Storage, storageName[c.Storage])
		d.check("replicas", s.Replicas, c.Replicas)
		d.report(t, "KeyValue "+name)
	}
	for name := range byName {
		if !slices.Contains(names, name) {
			t.Errorf("templates/nack.yaml renders KeyValue %s, which the worker does not provision", name)
		}
	}
}
