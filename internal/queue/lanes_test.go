package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/lanes"
	"github.com/omicsq/omicsq/internal/submit"
)

// orderAPI records the Names of RunApplication calls in order.
type orderAPI struct {
	mu    sync.Mutex
	names []string
}

func (a *orderAPI) RunApplication(_ context.Context, req *submit.RunApplicationRequest) (*submit.RunApplicationResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.names = append(a.names, req.Name)
	return &submit.RunApplicationResponse{RunGroupId: "rg-" + req.Name, RequestId: "req"}, nil
}

func (a *orderAPI) FindRunGroupsByName(context.Context, *string, string, func(context.Context) error) ([]submit.RunGroup, error) {
	return nil, nil
}

func (a *orderAPI) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.names)
}

// paced is a Limiter granting one call every gap in this process, like a
// rate limit.
type paced struct {
	mu   sync.Mutex
	next time.Time
	gap  time.Duration
}

func (p *paced) Wait(ctx context.Context) (time.Duration, error) {
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.gap)
	p.mu.Unlock()
	return at.Sub(now), sleep(ctx, at.Sub(now))
}
func (p *paced) Throttled(context.Context) {}

func laneBody(name, project string) []byte {
	b, _ := json.Marshal(map[string]any{"ApplicationId": "app-1", "EnvironmentId": "env-1", "Name": name, "ProjectId": project, "InputBase64": "e30K"})
	return b
}

func publishLane(t *testing.T, p *client.Client, name, project string, prio client.Priority, fairness string) {
	t.Helper()
	if _, err := p.Publish(t.Context(), client.Request{Key: name, Body: laneBody(name, project), Priority: prio, FairnessKey: fairness}); err != nil {
		t.Fatal(err)
	}
}

func sharedPicker(t *testing.T, js jetstream.JetStream, cfg lanes.Config) *lanes.Shared {
	t.Helper()
	kv, err := js.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "OMICSQ_RATELIMIT"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := lanes.NewShared(kv, "runapplication.lanes", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startConsumer(t *testing.T, c *Consumer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func waitCalls(t *testing.T, api *orderAPI, n int, within time.Duration) []string {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d calls", n), func() bool { return len(api.calls()) >= n })
	return api.calls()
}

// Urgent requests published behind a routine backlog are called next;
// within the routine lane the flows (the legacy bare subject, and two
// projects) share 1:1, so the small one is done long before the large; and
// every request is called exactly once.
func TestLanesUrgentFirstAndFairFlows(t *testing.T) {
	topo := DefaultTopology()
	api := &orderAPI{}
	log := slog.New(slog.DiscardHandler)
	proc, js, _ := testProcessor(t, topo, api, log)
	proc.RunLimiter = &paced{gap: 20 * time.Millisecond}
	producer := client.New(js, client.WithTopology(topo.Topology))
	for i := range 60 {
		publishLane(t, producer, fmt.Sprintf("big-%02d", i), "proj-big", client.PriorityRoutine, "")
	}
	for i := range 6 {
		publishLane(t, producer, fmt.Sprintf("small-%02d", i), "proj-small", client.PriorityRoutine, "")
	}
	for i := range 30 {
		publishLane(t, producer, fmt.Sprintf("legacy-%02d", i), "proj-big", "", "")
	}
	flows := &Flows{JS: js, Topology: topo, Picker: sharedPicker(t, js, lanes.DefaultConfig()), Log: log}
	c := &Consumer{JS: js, Topology: topo, Processor: proc, Concurrency: 2, MaxBatch: 1, DrainTimeout: 5 * time.Second,
		Flows: flows, Metrics: proc.Metrics, Log: log}
	startConsumer(t, c)
	waitCalls(t, api, 10, 10*time.Second)
	for i := range 5 {
		publishLane(t, producer, fmt.Sprintf("urgent-%d", i), "proj-big", client.PriorityUrgent, "lab-x")
	}
	published := len(api.calls())
	calls := waitCalls(t, api, 101, 20*time.Second)
	for i, n := range calls {
		// The urgent ones come within the decisions already made when they
		// arrived (in flight, plus a stale backlog read): a handful, a few
		// more on a loaded machine; first-in-first-out would be 90 later.
		if strings.HasPrefix(n, "urgent-") && i > published+20 {
			t.Errorf("%s was call %d; published after call %d", n, i, published)
		}
	}
	lastSmall := slices.IndexFunc(calls, func(n string) bool { return n == "small-05" })
	if lastSmall < 0 || lastSmall > 30 {
		t.Errorf("the small project's last call was call %d; want it within the first 30 (3 flows 1:1)", lastSmall)
	}
	seen := map[string]bool{}
	for _, n := range calls {
		if seen[n] {
			t.Errorf("%s called twice", n)
		}
		seen[n] = true
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(api.calls()); n != 101 {
		t.Errorf("calls = %d, want 101", n)
	}
}

// recordingPicker records the flows its picker chose, in order, across
// every replica that shares it.
type recordingPicker struct {
	FlowPicker
	mu    *sync.Mutex
	picks *[]lanes.Flow
}

func (r recordingPicker) Pick(ctx context.Context, backlog map[lanes.Flow]uint64) (lanes.Flow, bool, error) {
	f, ok, err := r.FlowPicker.Pick(ctx, backlog)
	if ok && err == nil {
		r.mu.Lock()
		*r.picks = append(*r.picks, f)
		r.mu.Unlock()
	}
	return f, ok, err
}

// Two replicas, each with its own scheduler handle on the one shared State,
// draw from the same flows: the fleet's decisions split exactly 3:1 between
// two projects weighted 3:1 while both are backlogged, as one process's
// would, and so do its calls, up to the messages in flight (which a replica
// may call in another order than it fetched them).
func TestLanesFleetSharesOneSchedule(t *testing.T) {
	topo := DefaultTopology()
	api := &orderAPI{}
	log := slog.New(slog.DiscardHandler)
	proc, js, _ := testProcessor(t, topo, api, log)
	limiter := &paced{gap: 10 * time.Millisecond} // the fleet's one quota
	proc.RunLimiter = limiter
	proc2 := &Processor{Ledger: proc.Ledger, Outbox: &JetStreamOutbox{JS: js, Topology: topo}, API: api,
		RunLimiter: limiter, DescribeLimiter: noLimit{}, Pause: proc.Pause, Policy: proc.Policy, Limits: proc.Limits,
		CallTimeout: proc.CallTimeout, LeaseTTL: proc.LeaseTTL, Metrics: proc.Metrics, Log: log, Worker: "w2"}
	producer := client.New(js, client.WithTopology(topo.Topology))
	for i := range 150 {
		publishLane(t, producer, fmt.Sprintf("heavy-%03d", i), "proj-heavy", client.PriorityNormal, "")
		publishLane(t, producer, fmt.Sprintf("light-%03d", i), "proj-light", client.PriorityNormal, "")
	}
	cfg := lanes.DefaultConfig()
	heavyToken := client.KeyToken("proj-heavy")
	cfg.Weights = map[string]float64{heavyToken: 3}
	var mu sync.Mutex
	var picks []lanes.Flow
	for _, p := range []*Processor{proc, proc2} {
		picker := recordingPicker{FlowPicker: sharedPicker(t, js, cfg), mu: &mu, picks: &picks}
		flows := &Flows{JS: js, Topology: topo, Picker: picker, Log: log}
		startConsumer(t, &Consumer{JS: js, Topology: topo, Processor: p, Concurrency: 2, MaxBatch: 1, DrainTimeout: 5 * time.Second,
			Flows: flows, Metrics: p.Metrics, Log: log})
	}
	calls := waitCalls(t, api, 160, 20*time.Second)[:160]
	mu.Lock()
	decided := slices.Clone(picks[:160])
	mu.Unlock()
	heavyPicks := 0
	for _, f := range decided {
		if f.Token == heavyToken {
			heavyPicks++
		}
	}
	// The decisions are serial and exactly 3:1 (internal/lanes tests it
	// with concurrent handles); here they are recorded after each returns,
	// and a replica descheduled between its decision and the record shifts
	// a few across the 160th.
	if heavyPicks < 116 || heavyPicks > 124 {
		t.Errorf("heavy got %d of the fleet's first 160 decisions; want 120 (3:1)", heavyPicks)
	}
	heavy := 0
	for _, n := range calls {
		if strings.HasPrefix(n, "heavy-") {
			heavy++
		}
	}
	// Four messages in flight (two replicas × two slots) may be called out
	// of order, and a slow handler a little more; 3:1 is 120 of 160.
	if heavy < 110 || heavy > 130 {
		t.Errorf("heavy got %d of the first 160 calls; want about 120 (3:1)", heavy)
	}
}

// A request on a subject that names no lane, or with a token too many, is
// refused at publish (the stream does not take it, so it cannot sit where
// no consumer reads it, holding its key's de-duplication window); one whose
// token is a producer's own, not a consumer-name-safe one, is consumed.
func TestLaneSubjectsTheStreamTakes(t *testing.T) {
	topo := DefaultTopology()
	api := &orderAPI{}
	log := slog.New(slog.DiscardHandler)
	proc, js, _ := testProcessor(t, topo, api, log)
	proc.RunLimiter = &paced{gap: 5 * time.Millisecond}
	for _, subj := range []string{topo.RequestsSubject + ".stat.lab-1", topo.RequestsSubject + ".urgent.a.b", topo.RequestsSubject + ".Urgent.x"} {
		if _, err := js.Publish(t.Context(), subj, laneBody("rogue", "p")); err == nil {
			t.Errorf("publish to %s was stored", subj)
		}
	}
	odd := strings.Repeat("x", 70) + "é"
	m := &nats.Msg{Subject: topo.RequestsSubject + ".urgent." + odd, Data: laneBody("odd-token", "p"), Header: nats.Header{}}
	m.Header.Set(client.HeaderKey, "odd-token")
	if _, err := js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	flows := &Flows{JS: js, Topology: topo, Picker: sharedPicker(t, js, lanes.DefaultConfig()), Log: log}
	c := &Consumer{JS: js, Topology: topo, Processor: proc, Concurrency: 1, MaxBatch: 1, DrainTimeout: 5 * time.Second,
		Flows: flows, Metrics: proc.Metrics, Log: log}
	startConsumer(t, c)
	if calls := waitCalls(t, api, 1, 10*time.Second); calls[0] != "odd-token" {
		t.Fatalf("calls %q", calls)
	}
}

// A flow with nothing pending but messages out is probed apart from the
// schedule, again only a probe interval after an empty probe, so its empty fetches never
// count as scheduling decisions; a flow set aside is offered to neither.
func TestFlowsProbeOutsideTheSchedule(t *testing.T) {
	routine := lanes.Flow{Lane: lanes.LaneIndex(client.PriorityRoutine), Token: "held"}
	urgent := lanes.Flow{Lane: lanes.LaneIndex(client.PriorityUrgent), Token: "busy"}
	broken := lanes.Flow{Lane: lanes.LaneIndex(client.PriorityNormal), Token: "broken"}
	f := &Flows{backlog: map[lanes.Flow]FlowBacklog{routine: {AckPending: 10}, urgent: {Pending: 50}, broken: {Pending: 5}},
		probed: map[lanes.Flow]time.Time{}, aside: map[lanes.Flow]time.Time{broken: time.Now().Add(time.Minute)}}
	if got := f.candidates(); len(got) != 1 || got[urgent] != 50 {
		t.Errorf("candidates %v: want only the urgent flow's 50", got)
	}
	if fl, ok := f.dueProbe(); !ok || fl != routine {
		t.Fatalf("dueProbe = %v, %v: want the held routine flow", fl, ok)
	}
	f.probed[routine] = time.Now() // Next's mark of an empty probe
	if fl, ok := f.dueProbe(); ok {
		t.Errorf("probed again right after an empty probe: %v", fl)
	}
}
