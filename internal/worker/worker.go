// Package worker is the omicsq worker process: configuration, wiring, the
// embedded JetStream server, the in-process sandbox and the ordered
// shutdown. cmd/worker runs it; tests and examples run it in-process.
//
// The worker pulls run requests from NATS JetStream and submits them to
// the Tencent Cloud Omics RunApplication API, at most a configured rate across
// every replica, with exactly-once effects: each request ends as one run group
// (published to the results stream) or one dead letter.
//
// With no NATS URL it starts an embedded JetStream server on loopback, and
// with --sandbox an in-process sandbox Omics API, so `go run ./cmd/worker
// --sandbox` is a complete local system.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"golang.org/x/sync/errgroup"

	"github.com/omicsq/omicsq/internal/batch"
	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/lanes"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/rerun"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/tracker"
	"github.com/omicsq/omicsq/metrics"
	"github.com/omicsq/omicsq/sandbox"
)

// Version is reported in the logs and omicsq_build_info; cmd/worker sets it
// from the value its build stamps in.
var Version = "dev"

// ErrHelp is returned by Run when the arguments asked for help, which has
// been printed.
var ErrHelp = errors.New("help requested")

// fetchHorizon bounds how soon the limiter must be able to admit a call
// before the consumer fetches another message (bench faults: 1 s left
// about 16 leased, idle keys per replica to strand on a kill; 300 ms,
// about 5).
const fetchHorizon = 300 * time.Millisecond

// startFailed is the outcome of a start-up step that failed: a stop asked
// for meanwhile (SIGTERM during provisioning, a rollout) is a clean stop,
// not a failure, since nothing was taken yet that a drain would owe.
func startFailed(ctx context.Context, log *slog.Logger, err error) error {
	if ctx.Err() != nil {
		log.Info("stopped during start-up", "step_error", err)
		return nil
	}
	return err
}

// Started reports the addresses a running worker bound.
type Started struct {
	NATSURL     string
	MetricsAddr string
	SandboxAddr string
	Sandbox     *sandbox.Server
}

// Run is the whole worker until ctx ends; main only wires signals. ready, when not nil,
// receives the bound addresses once the worker consumes.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready chan<- Started) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flagErrHelp) {
		return ErrHelp
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	log.Info("starting", "version", Version, "worker", cfg.WorkerID)
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.BuildInfo{Version: Version, Revision: revision(), GoVersion: runtime.Version()})
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// Each step pushes its own shutdown; they run in reverse, after the
	// consumer has drained: metrics server, tracker, limiters, sandbox,
	// NATS connection (drained), embedded server.
	var down shutdown
	defer down.run()
	p := &process{cfg: cfg, log: log, m: m}
	if err := p.connect(ctx, &down); err != nil {
		return startFailed(ctx, log, err)
	}
	if err := p.build(ctx, &down); err != nil {
		return startFailed(ctx, log, err)
	}
	httpSrv, err := p.serveMetrics(reg, &down)
	if err != nil {
		return err
	}
	err = p.run(ctx, ready)
	log.Info("stopped consuming; shutting down", "cause", context.Cause(ctx))
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = httpSrv.Shutdown(sctx)
		cancel()
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// shutdown is a stack of closes, run last pushed first.
type shutdown []func()

func (s *shutdown) push(f func()) { *s = append(*s, f) }

func (s shutdown) run() {
	for i := len(s) - 1; i >= 0; i-- {
		s[i]()
	}
}

// process is a worker's wiring, filled by its steps.
type process struct {
	cfg *config
	log *slog.Logger
	m   *metrics.Metrics
	st  Started

	nc         *nats.Conn
	js         jetstream.JetStream
	runLimiter limiter
	pauser     *pause.Controller
	brk        *breaker.Breaker
	batches    *batch.Gate
	consumer   *queue.Consumer
	trk        *workerTracker
	auto       *rerun.Auto
}

// connect starts the embedded server if no URL is given, connects and
// provisions (or verifies) the topology.
func (p *process) connect(ctx context.Context, down *shutdown) error {
	cfg, log, m := p.cfg, p.log, p.m
	natsURL := cfg.NATS.URLs
	if natsURL == "" {
		ns, err := startEmbedded(cfg, log)
		if err != nil {
			return err
		}
		down.push(func() {
			ns.Shutdown()
			ns.WaitForShutdown()
			log.Info("embedded NATS server stopped")
		})
		natsURL = ns.ClientURL()
	}
	p.st.NATSURL = natsURL
	conn := cfg.NATS
	conn.URLs, conn.Name = natsURL, "omicsq-worker "+cfg.WorkerID
	nc, err := natsconn.Connect(ctx, conn, log, natsconn.Hooks{
		OnDisconnect: func() { m.SetNATSConnected(false) },
		OnReconnect:  func() { m.SetNATSConnected(true); m.NATSReconnected() },
	})
	if err != nil {
		return err
	}
	down.push(func() {
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
		log.Info("NATS connection drained")
	})
	m.SetNATSConnected(nc.IsConnected())
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	p.nc, p.js = nc, js
	if err := setupTopology(ctx, js, cfg); err != nil {
		return err
	}
	setupTracker(ctx, js, cfg, log)
	return nil
}

// build makes the API client, limiters, ledger, pause, breaker, processor,
// consumer and tracker.
func (p *process) build(ctx context.Context, down *shutdown) error {
	cfg, log, m, js := p.cfg, p.log, p.m, p.js
	api, sb, err := newAPI(ctx, cfg, log)
	if err != nil {
		return err
	}
	if sb != nil {
		down.push(sb.Close)
		p.st.SandboxAddr, p.st.Sandbox = sb.Addr(), sb.Server()
	}
	account := "sandbox"
	if !cfg.Sandbox {
		account = cfg.accountHint()
	}
	runLimiter, err := newLimiter(ctx, js, cfg, account, "RunApplication", log)
	if err != nil {
		return err
	}
	down.push(func() { runLimiter.Close() })
	describeLimiter, err := newLimiter(ctx, js, cfg, account, "DescribeRunGroups", log)
	if err != nil {
		return err
	}
	down.push(func() { describeLimiter.Close() })
	configured, _ := runLimiter.Rates()
	m.SetRateLimit(configured, configured)
	p.runLimiter = runLimiter

	led, err := ledger.Open(ctx, js, cfg.Topology.LedgerBucket)
	if err != nil {
		return err
	}
	if err := p.buildControls(ctx, api, runLimiter); err != nil {
		return err
	}
	p.consumer = p.newConsumer(led, api, runLimiter, describeLimiter)
	if cfg.Topology.Lanes {
		flows, err := p.newFlows(ctx, account)
		if err != nil {
			return err
		}
		p.consumer.Flows = flows
	}
	trk, err := newTracker(ctx, js, cfg, account, api, led, describeLimiter, m, log)
	if err != nil {
		return err
	}
	if trk != nil {
		down.push(trk.close)
		p.trk = trk
	}
	return p.buildAutoRetry(ctx, down, api, account, describeLimiter)
}

// buildControls makes the fleet-wide pause and, when enabled, the breaker.
func (p *process) buildControls(ctx context.Context, api *submit.Client, runLimiter limiter) error {
	cfg, m := p.cfg, p.m
	controlKV, err := p.js.KeyValue(ctx, cfg.Topology.ControlBucket)
	if err != nil {
		return fmt.Errorf("bind bucket %s: %w", cfg.Topology.ControlBucket, err)
	}
	p.pauser = pause.New(controlKV, pause.Config{
		Worker: cfg.WorkerID, ProbeInterval: cfg.PauseProbeInterval, UnreachableAfter: cfg.UnreachableAfter, Logger: p.log,
		Probe:    func(ctx context.Context) error { return probeAPI(ctx, api, runLimiter) },
		OnChange: func(s pause.State) { m.SetPaused(s.Paused, s.Reason) },
	})
	if cfg.BreakerThreshold <= 0 {
		return nil
	}
	breakerKV, err := p.js.KeyValue(ctx, cfg.Topology.BreakerBucket)
	if err != nil {
		return fmt.Errorf("bind bucket %s: %w", cfg.Topology.BreakerBucket, err)
	}
	p.brk = breaker.New(breakerKV, breaker.Config{
		Window: cfg.BreakerWindow, Threshold: cfg.BreakerThreshold, Actor: cfg.WorkerID, Logger: p.log,
		OnOpen: func(t breaker.Trip) { m.BreakerOpened(t.Resource.Kind) },
	})
	return nil
}

// newConsumer makes the processor and the consume loop around it.
func (p *process) newConsumer(led *ledger.Ledger, api *submit.Client, runLimiter, describeLimiter limiter) *queue.Consumer {
	cfg, m := p.cfg, p.m
	proc := &queue.Processor{
		Ledger: led, Outbox: &queue.JetStreamOutbox{JS: p.js, Topology: cfg.Topology}, API: api,
		RunLimiter: runLimiter, DescribeLimiter: describeLimiter, Pause: p.pauser,
		Policy: submission.Policy{
			Retry: cfg.Retry, Horizon: cfg.LookupHorizon, LookupInitial: time.Second, LookupMax: 30 * time.Second,
			MaxDeliveries: cfg.Topology.MaxDeliver, MaxPauseStrikes: cfg.MaxPauseStrikes, CreateSkew: 5 * time.Minute,
		},
		Limits: cfg.Limits, CallTimeout: cfg.APITimeout, LeaseTTL: cfg.LeaseTTL,
		BreakerWindow: cfg.BreakerWindow, BreakerHold: cfg.BreakerHold,
		Metrics: m, Log: p.log, Worker: cfg.WorkerID,
	}
	if p.brk != nil {
		proc.Breaker = p.brk // a nil *Breaker in the interface would not read as off
	}
	if strings.TrimSpace(cfg.Topology.BatchesBucket) != "" {
		p.batches = batch.NewGate(p.js, cfg.Topology.BatchesBucket, p.log)
		proc.Batches = p.batches
	}
	consumer := &queue.Consumer{
		JS: p.js, Topology: cfg.Topology, Processor: proc, Concurrency: cfg.Concurrency,
		// Fetch only what the limiter can admit within fetchHorizon: a message
		// held while waiting for a token is one a SIGKILL strands for AckWait.
		Ready:        func(ctx context.Context) error { return runLimiter.Ready(ctx, fetchHorizon) },
		DrainTimeout: cfg.DrainTimeout, Metrics: m, Log: p.log,
	}
	if cfg.Rate > 0 {
		consumer.MaxBatch = 1 // hold only what the limiter lets us submit soon
	}
	return consumer
}

// newFlows makes the lanes' scheduler: its state is a sibling of the
// RunApplication limiter's key, in the limiter's bucket, so that the fleet
// sharing one quota shares one schedule.
func (p *process) newFlows(ctx context.Context, account string) (*queue.Flows, error) {
	cfg := p.cfg
	kv, err := p.js.KeyValue(ctx, ratelimit.DefaultBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = p.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: ratelimit.DefaultBucket, Description: "omicsq rate limiter state: one key per quota",
			History: 1, Replicas: cfg.Topology.Replicas, Storage: jetstream.FileStorage,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", ratelimit.DefaultBucket, err)
	}
	picker, err := lanes.NewShared(kv, ratelimit.Key(account, cfg.Region, "RunApplication")+".lanes", cfg.lanes)
	if err != nil {
		return nil, err
	}
	names := cfg.fairnessNames()
	p.m.NameFairnessKeys(slices.Collect(maps.Values(names)))
	return &queue.Flows{JS: p.js, Topology: cfg.Topology, Picker: picker, Refresh: cfg.LaneRefresh,
		Names: names, Metrics: p.m, Log: p.log}, nil
}

// serveMetrics serves /metrics, /healthz and /readyz when configured.
func (p *process) serveMetrics(reg *prometheus.Registry, down *shutdown) (*http.Server, error) {
	if p.cfg.MetricsAddr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", p.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	p.st.MetricsAddr = ln.Addr().String()
	srv := &http.Server{
		Handler:           metrics.NewHandler(reg, func() error { return readiness(p.nc, p.consumer, p.pauser) }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	serving := make(chan struct{})
	go func() {
		defer close(serving)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("metrics server stopped", "error", err)
		}
	}()
	down.push(func() { <-serving }) // Shutdown (in Run) ends Serve; wait for it
	p.log.Info("serving /metrics, /healthz and /readyz", "addr", p.st.MetricsAddr)
	return srv, nil
}

// run runs every loop until ctx ends or one fails; the consumer drains
// before it returns.
func (p *process) run(ctx context.Context, ready chan<- Started) error {
	cfg := p.cfg
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.consumer.Run(gctx) })
	g.Go(func() error { return p.consumer.RunAdvisories(gctx) })
	g.Go(func() error { p.consumer.RunStats(gctx, 10*time.Second); return nil })
	g.Go(func() error { return p.pauser.Run(gctx) })
	if p.brk != nil {
		g.Go(func() error { return p.brk.Run(gctx) })
	}
	if p.batches != nil {
		g.Go(func() error { return p.batches.Run(gctx) })
	}
	g.Go(func() error { reportRates(gctx, p.runLimiter, p.m); return nil })
	if p.trk != nil {
		g.Go(func() error { return p.trk.Run(gctx) })
	}
	if p.auto != nil {
		g.Go(func() error { return p.auto.Run(gctx) })
	}
	p.log.Info("consuming", "stream", cfg.Topology.RequestsStream, "consumer", cfg.Topology.Consumer,
		"concurrency", cfg.Concurrency, "rate", cfg.Rate, "rate_limit_scope", cfg.RateLimitScope)
	if ready != nil {
		ready <- p.st
	}
	return g.Wait()
}

// workerTracker is the run tracker with the DescribeRuns limiter it alone
// uses (the DescribeRunGroups one it shares with reconciliation).
type workerTracker struct {
	*tracker.Tracker
	runsLimiter limiter
}

func (w *workerTracker) close() { _ = w.runsLimiter.Close() }

// newTracker builds the run tracker, or nil with --tracker=false.
func newTracker(ctx context.Context, js jetstream.JetStream, cfg *config, account string, api *submit.Client,
	led *ledger.Ledger, describeLimiter limiter, m *metrics.Metrics, log *slog.Logger) (*workerTracker, error) {
	m.SetTrackerEnabled(cfg.Topology.Tracker)
	if !cfg.Topology.Tracker {
		return nil, nil
	}
	runsLimiter, err := newLimiter(ctx, js, cfg, account, "DescribeRuns", log)
	if err != nil {
		return nil, err
	}
	projects := cfg.trackerProjects()
	if cfg.Sandbox {
		projects = append(projects, sandboxExampleProject)
	}
	t, err := tracker.New(tracker.Config{
		JS: js, Topology: cfg.Topology, API: api, Ledger: led, Projects: projects,
		DescribeLimiter: describeLimiter, RunsLimiter: runsLimiter, Rate: cfg.Rate, Share: cfg.TrackerShare,
		Interval: cfg.TrackerInterval, LeaseTTL: cfg.TrackerLeaseTTL, Worker: cfg.WorkerID, Metrics: m, Log: log,
	})
	if err != nil {
		_ = runsLimiter.Close()
		return nil, err
	}
	return &workerTracker{Tracker: t, runsLimiter: runsLimiter}, nil
}

func setupTopology(ctx context.Context, js jetstream.JetStream, cfg *config) error {
	// The tracker's resources are set up apart (setupTracker).
	core := cfg.Topology
	core.Tracker = false
	// A cluster may still be electing leaders right after start: retry briefly.
	var err error
	for attempt := 0; attempt < 30; attempt++ {
		if cfg.Provision {
			err = queue.Provision(ctx, js, core)
		} else {
			err = queue.Verify(ctx, js, core)
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
	if err != nil {
		return fmt.Errorf("jetstream topology: %w", err)
	}
	return nil
}

// setupTracker provisions (or checks) the run tracker's stream, bucket and
// consumer. Their absence — not provisioned with --provision=false, or not
// permitted — must not stop submissions: it is logged, the tracker keeps
// trying to bind them, and OmicsqTrackerStopped alerts.
func setupTracker(ctx context.Context, js jetstream.JetStream, cfg *config, log *slog.Logger) {
	if !cfg.Topology.Tracker {
		return
	}
	var err error
	if cfg.Provision {
		err = queue.ProvisionTracker(ctx, js, cfg.Topology)
	} else {
		err = queue.VerifyTracker(ctx, js, cfg.Topology)
	}
	if err != nil && ctx.Err() == nil {
		log.Error("the run tracker lacks its stream, bucket or consumer; submissions go on, the tracker waits for them",
			"error", err)
	}
}

// newAPI returns the Omics client, starting the in-process sandbox in
// --sandbox mode.
func newAPI(ctx context.Context, cfg *config, log *slog.Logger) (*submit.Client, *sandboxHandle, error) {
	endpoint, insecure := cfg.Endpoint, cfg.InsecureHTTP
	var cred common.CredentialIface
	var sb *sandboxHandle
	if cfg.Sandbox {
		h, err := startSandbox(ctx, cfg, log)
		if err != nil {
			return nil, nil, err
		}
		sb = h
		endpoint, insecure = h.Addr(), true
		cred = common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)
		log.Warn("SANDBOX MODE: submitting to an in-process sandbox Omics API, not Tencent Cloud; no real run is created",
			"sandbox_addr", h.Addr())
	} else {
		c, err := submit.CredentialFromEnvironment()
		if err != nil {
			return nil, nil, fmt.Errorf("tencent cloud credentials: %w", err)
		}
		cred = c
	}
	region := cfg.Region
	if region == "" {
		region = "ap-guangzhou"
	}
	client, err := submit.New(submit.Config{Region: region, Endpoint: endpoint, InsecureHTTP: insecure, Timeout: cfg.APITimeout, Credential: cred})
	if err != nil {
		if sb != nil {
			sb.Close()
		}
		return nil, nil, err
	}
	return client, sb, nil
}

// limiter is the worker's view of a rate limiter (global or local).
type limiter interface {
	queue.Limiter
	Ready(ctx context.Context, horizon time.Duration) error
	Rates() (configured, effective float64)
	Close() error
}

func newLimiter(ctx context.Context, js jetstream.JetStream, cfg *config, account, action string, log *slog.Logger) (limiter, error) {
	if cfg.Rate == 0 {
		return unlimited{}, nil
	}
	if cfg.RateLimitScope == "local" {
		return ratelimit.NewLocal(cfg.Rate, cfg.Burst), nil
	}
	rc := ratelimit.Config{
		Limit: int(cfg.Rate), Window: time.Second, Guard: cfg.RateLimitGuard, Burst: cfg.Burst,
		Replicas: cfg.Topology.Replicas, Logger: log.With("limiter", action),
	}
	g, err := ratelimit.NewGlobal(ctx, js, ratelimit.Key(account, cfg.Region, action), rc)
	if err != nil {
		return nil, fmt.Errorf("rate limiter %s: %w", action, err)
	}
	return g, nil
}

// unlimited is the limiter of --rate 0 (a sandbox with its limit lifted,
// benchmarks): it never waits.
type unlimited struct{}

func (unlimited) Wait(context.Context) (time.Duration, error) { return 0, nil }
func (unlimited) Ready(context.Context, time.Duration) error  { return nil }
func (unlimited) Throttled(context.Context)                   {}
func (unlimited) Rates() (configured, effective float64)      { return 0, 0 }
func (unlimited) Close() error                                { return nil }

// accountHint identifies the quota the limiter is keyed by without holding
// the secret: the SecretId (hashed by ratelimit.Key) or, for role-based
// credentials, the role.
func (c *config) accountHint() string {
	if c.QuotaAccount != "" {
		return c.QuotaAccount
	}
	for _, v := range []string{"TENCENTCLOUD_SECRET_ID", "TKE_ROLE_ARN"} {
		if s := os.Getenv(v); s != "" {
			return s
		}
	}
	return "default"
}

// probeAPI asks whether RunApplication itself is allowed again, without
// creating anything: a deliberately invalid call answered with a parameter
// error proves the credentials and permissions work (submit's
// ProbeRunApplication). It takes a RunApplication token like any call.
func probeAPI(ctx context.Context, api *submit.Client, lim limiter) error {
	if _, err := lim.Wait(ctx); err != nil {
		return err
	}
	return api.ProbeRunApplication(ctx)
}

func readiness(nc *nats.Conn, c *queue.Consumer, p *pause.Controller) error {
	if !nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	if !c.Bound() {
		return errors.New("consumer not bound")
	}
	if s := p.State(); s.Paused {
		return fmt.Errorf("submissions paused fleet-wide: %s (%s)", s.Reason, s.Code)
	}
	return nil
}

func reportRates(ctx context.Context, l limiter, m *metrics.Metrics) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastEffective float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			configured, effective := l.Rates()
			if effective < lastEffective {
				m.RateLimitDecrease()
			}
			lastEffective = effective
			m.SetRateLimit(configured, effective)
		}
	}
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
