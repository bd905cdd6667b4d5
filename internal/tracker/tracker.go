// Package tracker is the run tracker: a component of the worker fleet that
// follows every run group omicsq created to a terminal status and publishes
// one lifecycle event (client.StatusEvent) per change of status of a group,
// and of each run of a table batch, to the status stream.
//
// One replica leads (a lease in the control bucket; fail-over within two
// lease TTLs) and alone polls: it learns run groups from the results
// stream through a durable consumer, records each in the runs bucket before
// acking, and every interval describes the active ones, up to 100 run group
// IDs per DescribeRunGroups call, spending at most its share of the Describe
// rate. Events are at most once per (key, run group, run, status) through
// crashes, restarts and fail-overs: each publish is a compare-and-set on its
// subject's last sequence, recorded afterwards in the runs entry, and
// carries client.StatusMsgID for the stream's duplicate window.
// docs/lifecycle.md is the contract.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/metrics"
)

// Defaults of Config.
const (
	DefaultShare    = 0.25
	DefaultInterval = 5 * time.Second
	DefaultLeaseTTL = 10 * time.Second
	// LeaseKey is the leadership lease's key in the control bucket.
	LeaseKey = "tracker-leader"
)

// API is the part of the Omics client the tracker calls; *submit.Client.
type API interface {
	DescribeRunGroups(ctx context.Context, req *submit.DescribeRunGroupsRequest) (*submit.DescribeRunGroupsResponse, error)
	DescribeRuns(ctx context.Context, req *submit.DescribeRunsRequest) (*submit.DescribeRunsResponse, error)
}

// LedgerReader reads the submission ledger; *ledger.Ledger.
type LedgerReader interface {
	Get(ctx context.Context, key string) (ledger.Entry, uint64, error)
}

// Config configures a Tracker.
type Config struct {
	// JS and Topology name the results stream, the tracker consumer, the
	// status stream, the runs and control buckets (all provisioned by
	// queue.Provision).
	JS       jetstream.JetStream
	Topology queue.Topology
	// API makes the Describe calls (required).
	API API
	// Ledger resolves the project of a run group (see docs/lifecycle.md);
	// nil assumes every group is in the region's default project.
	Ledger LedgerReader
	// Projects are the ProjectIds, besides the default project, whose run
	// groups the tracker can follow.
	Projects []string
	// DescribeLimiter and RunsLimiter are the fleet-wide limiters of
	// DescribeRunGroups (shared with reconciliation) and DescribeRuns;
	// every call takes a token from them too. Nil: none.
	DescribeLimiter queue.Limiter
	RunsLimiter     queue.Limiter
	// Rate is the API's calls per second per action that those limiters
	// enforce (0: unlimited); the tracker spends at most Share of it per
	// action, leaving the rest to reconciliation. Share defaults to
	// DefaultShare.
	Rate  float64
	Share float64
	// Interval is the time between the starts of poll cycles (a longer
	// cycle is followed at once by the next). Default DefaultInterval.
	Interval time.Duration
	// LeaseTTL is the leadership lease's lifetime without renewal.
	// Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// IDsPerCall is the number of run group IDs in one DescribeRunGroups
	// filter, at most (and by default) 100.
	IDsPerCall int
	// Worker names this replica in the lease.
	Worker string
	// Metrics receives the tracker's series (required).
	Metrics *metrics.Metrics
	// Log defaults to slog.Default(); Now to time.Now.
	Log *slog.Logger
	Now func() time.Time
}

// Stats is a snapshot of a Tracker.
type Stats struct {
	// Leader reports that this replica leads now.
	Leader bool
	// Cycles counts the poll cycles completed; Last is the latest one.
	Cycles uint64
	Last   CycleStats
	// Active is the number of run groups followed (while leading).
	Active int
}

// Tracker is the run tracker of one replica. Run it with Run.
type Tracker struct {
	js         jetstream.JetStream
	topo       queue.Topology
	api        API
	ledger     LedgerReader
	projects   []string
	interval   time.Duration
	idsPerCall int
	budgetRate float64
	metrics    *metrics.Metrics
	log        *slog.Logger
	now        func() time.Time
	worker     string
	leaseTTL   time.Duration

	groupsBudget, runsBudget budget
	// terminateBudget paces TerminateRunGroup for cancelled batches.
	terminateBudget budget

	// Bound by Run.
	runs, control jetstream.KeyValue
	batchesKV     jetstream.KeyValue // nil: batches off
	status        jetstream.Stream
	runsTTL       time.Duration
	lease         *lease

	mu      sync.Mutex
	stats   Stats
	current *state
	lastLog map[string]time.Time
}

// New returns a Tracker for cfg. It performs no I/O.
func New(cfg Config) (*Tracker, error) {
	switch {
	case cfg.JS == nil || cfg.API == nil || cfg.Metrics == nil:
		return nil, errors.New("tracker: JS, API and Metrics are required")
	case cfg.Share < 0 || cfg.Share > 1:
		return nil, errors.New("tracker: share must be between 0 and 1")
	case cfg.Rate < 0:
		return nil, errors.New("tracker: rate must not be negative")
	case cfg.IDsPerCall < 0 || cfg.IDsPerCall > pageSize:
		return nil, fmt.Errorf("tracker: IDs per call must be between 1 and %d", pageSize)
	case cfg.Topology.RunsBucket == "" || cfg.Topology.TrackerConsumer == "" || cfg.Topology.StatusStream == "" ||
		cfg.Topology.StatusPrefix == "" || cfg.Topology.ControlBucket == "":
		return nil, errors.New("tracker: the topology lacks the tracker's names")
	}
	t := &Tracker{
		js: cfg.JS, topo: cfg.Topology, api: cfg.API, ledger: cfg.Ledger, metrics: cfg.Metrics,
		interval: or(cfg.Interval, DefaultInterval), idsPerCall: or(cfg.IDsPerCall, pageSize),
		leaseTTL: or(cfg.LeaseTTL, DefaultLeaseTTL), log: cfg.Log, now: cfg.Now, worker: or(cfg.Worker, "worker"),
		lastLog: make(map[string]time.Time),
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.log = t.log.With("component", "tracker")
	if t.now == nil {
		t.now = time.Now
	}
	t.projects = []string{""} // the default project
	for _, p := range cfg.Projects {
		if p != "" && !slices.Contains(t.projects, p) {
			t.projects = append(t.projects, p)
		}
	}
	share := or(cfg.Share, DefaultShare)
	var local func() *rate.Limiter
	if cfg.Rate > 0 {
		t.budgetRate = share * cfg.Rate
		local = func() *rate.Limiter { return rate.NewLimiter(rate.Limit(t.budgetRate), 1) }
	}
	t.groupsBudget, t.runsBudget = newBudget(local, cfg.DescribeLimiter), newBudget(local, cfg.RunsLimiter)
	t.terminateBudget = newTerminateBudget(t.budgetRate)
	return t, nil
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Stats returns a snapshot of the tracker's state.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	s, st := t.stats, t.current
	t.mu.Unlock()
	if st != nil {
		_, _, s.Active = st.gauges(t.now())
	}
	return s
}

// Run campaigns for the leadership and, while it leads, follows the run
// groups, until ctx ends. Failures are logged, counted and retried: the
// tracker never stops the worker, so Run returns nil.
func (t *Tracker) Run(ctx context.Context) error {
	t.metrics.SetTrackerEnabled(true)
	t.metrics.SetTrackerBudget(t.budgetRate)
	for ctx.Err() == nil {
		if err := t.bind(ctx); err != nil {
			t.failed("bind the tracker's streams and buckets", err)
			_ = sleep(ctx, t.leaseTTL)
			continue
		}
		if err := t.lease.acquire(ctx); err != nil {
			break
		}
		t.setLeader(true)
		t.log.Info("leading the run tracker", "lease_ttl", t.leaseTTL, "interval", t.interval, "budget_per_second", t.budgetRate)
		err := t.lead(ctx)
		t.setLeader(false)
		switch {
		case ctx.Err() != nil:
			t.lease.release()
		case errors.Is(err, errLeaseLost):
			t.log.Warn("stopped leading the run tracker; standing by", "cause", err)
		default:
			t.lease.release()
			t.failed("lead the run tracker", err)
			_ = sleep(ctx, t.leaseTTL/3)
		}
	}
	return nil
}

// bind opens the buckets and the stream once.
func (t *Tracker) bind(ctx context.Context) error {
	if t.lease != nil {
		return nil
	}
	runs, err := t.js.KeyValue(ctx, t.topo.RunsBucket)
	if err != nil {
		return fmt.Errorf("bind bucket %s: %w", t.topo.RunsBucket, err)
	}
	st, err := runs.Status(ctx)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", t.topo.RunsBucket, err)
	}
	control, err := t.js.KeyValue(ctx, t.topo.ControlBucket)
	if err != nil {
		return fmt.Errorf("bind bucket %s: %w", t.topo.ControlBucket, err)
	}
	status, err := t.js.Stream(ctx, t.topo.StatusStream)
	if err != nil {
		return fmt.Errorf("bind stream %s: %w", t.topo.StatusStream, err)
	}
	if b := t.topo.BatchesBucket; b != "" {
		// Batches are optional: a fleet whose bucket does not exist still
		// tracks run groups. Any other failure is bind's, retried: a leader
		// that went on without the bucket would leave its batches' members
		// behind for good (their entries end without their members written).
		t.batchesKV, err = t.js.KeyValue(ctx, b)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			t.failed("bind bucket "+b+" (it does not exist: batches are not followed)", err)
			t.batchesKV = nil
		} else if err != nil {
			return fmt.Errorf("bind bucket %s: %w", b, err)
		}
	}
	t.runs, t.control, t.status, t.runsTTL = runs, control, status, st.TTL()
	t.lease = newLease(control, LeaseKey, t.worker, t.leaseTTL, t.log)
	return nil
}

// lead follows the run groups until the lease is lost or ctx ends. Its
// goroutines are owned by one errgroup: renewing the lease, watching the
// runs bucket, learning results, polling, reporting and, with batches,
// watching the batches bucket and publishing completions.
func (t *Tracker) lead(ctx context.Context) error {
	st := newState()
	if t.batchesKV != nil {
		st.batches = newBatches(t.batchesKV, t.now)
	}
	t.mu.Lock()
	t.current = st
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.current = nil
		t.mu.Unlock()
		t.metrics.SetTrackerRunGroups(nil)
		t.metrics.SetTrackerLag(0)
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return t.lease.hold(gctx) })
	g.Go(func() error {
		return st.watch(gctx, t.runs, t.now, func(err error) { t.failed("decode a runs entry", err) })
	})
	g.Go(func() error { return t.learn(gctx, st) })
	g.Go(func() error { return t.pollLoop(gctx, st) })
	g.Go(func() error { t.reportLoop(gctx, st); return nil })
	if st.batches != nil {
		g.Go(func() error {
			return st.batches.watch(gctx, func(err error) { t.failed("decode a batches entry", err) })
		})
		g.Go(func() error { return t.completeLoop(gctx, st.batches) })
	}
	return g.Wait()
}

// pollLoop runs a cycle every interval once the active set is loaded.
func (t *Tracker) pollLoop(ctx context.Context, st *state) error {
	select {
	case <-st.loaded:
	case <-ctx.Done():
		return nil
	}
	t.reresolve(ctx, st)
	for {
		cs := t.cycle(ctx, st)
		if ctx.Err() != nil {
			return nil
		}
		t.metrics.TrackerCycle(cs.Duration, cs.DescribeRunGroups, cs.DescribeRuns)
		t.mu.Lock()
		t.stats.Cycles++
		t.stats.Last = cs
		t.mu.Unlock()
		t.report(st)
		if cs.Groups > 0 {
			t.log.Debug("poll cycle", "groups", cs.Groups, "seen", cs.Seen, "describe_run_groups", cs.DescribeRunGroups,
				"describe_runs", cs.DescribeRuns, "events", cs.Events, "errors", cs.Errors, "duration", cs.Duration)
		}
		if err := sleep(ctx, t.interval-cs.Duration); err != nil {
			return nil
		}
	}
}

// reportLoop keeps the run-group and lag gauges current between cycles,
// which can be long when thousands of groups share a small budget.
func (t *Tracker) reportLoop(ctx context.Context, st *state) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.report(st)
		}
	}
}

func (t *Tracker) report(st *state) {
	byStatus, lag, _ := st.gauges(t.now())
	t.metrics.SetTrackerRunGroups(byStatus)
	t.metrics.SetTrackerLag(lag)
}

func (t *Tracker) setLeader(on bool) {
	t.mu.Lock()
	t.stats.Leader = on
	t.mu.Unlock()
	t.metrics.SetTrackerLeader(on)
}

// failed counts a failure and logs it (see warn).
func (t *Tracker) failed(op string, err error) {
	t.metrics.TrackerError()
	t.warn(op, "tracker: could not "+op, "error", err)
}

// warn logs msg at most once per op every 10 s: a broken bucket, or a
// backlog of results without a known project, must not log once per run
// group.
func (t *Tracker) warn(op, msg string, args ...any) {
	now := time.Now()
	t.mu.Lock()
	last, ok := t.lastLog[op]
	quiet := ok && now.Sub(last) < 10*time.Second
	if !quiet {
		t.lastLog[op] = now
	}
	t.mu.Unlock()
	if !quiet {
		t.log.Warn(msg, args...)
	}
}

// budget is what one Describe action may spend: the tracker's share (local)
// and the fleet's limiter for the action (global), in that order so that no
// global token is held while waiting for the share.
type budget struct {
	local  *rate.Limiter
	global queue.Limiter
}

func newBudget(local func() *rate.Limiter, global queue.Limiter) budget {
	b := budget{global: global}
	if local != nil {
		b.local = local()
	}
	return b
}

func (b budget) wait(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if b.local != nil {
		if err := b.local.Wait(ctx); err != nil {
			return time.Since(start), err
		}
	}
	if b.global != nil {
		if _, err := b.global.Wait(ctx); err != nil {
			return time.Since(start), err
		}
	}
	return time.Since(start), nil
}
