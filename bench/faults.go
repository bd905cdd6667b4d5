package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/sandbox"
)

// The faults benchmark is issue 17's run: a preloaded burst of requests
// through a fleet that is SIGKILLed every few seconds while the API fails
// in every ambiguous way it can (commit-then-fail as a 502, a dropped
// connection or a hang; InternalError), judged from the sandbox's side.

const actionDescribe = "DescribeRunGroups"

// Issue 17's acceptance figures.
const (
	faultsTargetDrain     = 50 * time.Second
	faultsTargetRate      = 15.0 // RunApplication calls/s at the API during the drain
	faultsTargetRecovery  = 10 * time.Second
	faultsTargetLookupAmb = 1.5
)

// previousWorkerFlags is what `--worker-flags previous` expands to: the
// defaults before this benchmark set them (the consumer's fetch horizon was
// 1 s then, 300 ms now; it is not a flag), for side-by-side runs.
const previousWorkerFlags = "--ack-wait 60s --lease-ttl 15s --api-timeout 30s --concurrency 16"

type faultsConfig struct {
	Requests      int
	Workers       int
	CTF           float64
	CTFModes      string
	InternalError float64
	KillEvery     []time.Duration
	Lag           []time.Duration
	LagMax        time.Duration
	Latency       time.Duration
	LatencyP      float64
	HangTimeout   time.Duration
	Timeout       time.Duration
	Variants      []string
	Seed          uint64
	WarmLimiter   bool
	Trace         int
}

func (c *faultsConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Requests, "requests", 600, "requests published at once")
	fs.IntVar(&c.Workers, "workers", 3, "worker processes (global limiter, --rate 20)")
	fs.Float64Var(&c.CTF, "ctf", 0.30, "probability that a RunApplication call creates its run group and then fails (commit-then-fail)")
	fs.StringVar(&c.CTFModes, "ctf-modes", "bad_gateway,drop,hang", "commit-then-fail modes, in round-robin order")
	fs.Float64Var(&c.InternalError, "internal-error", 0.10, "probability of InternalError (nothing done)")
	c.KillEvery = []time.Duration{5 * time.Second}
	fs.Func("kill-every", "SIGKILL a random worker this often and restart it at once; comma-separated for several runs, 0 for none (default 5s)", func(s string) error {
		d, err := parseDurations(s)
		c.KillEvery = d
		return err
	})
	c.Lag = []time.Duration{0}
	fs.Func("lag", "visibility lag of new run groups to DescribeRunGroups; comma-separated for several runs (default 0)", func(s string) error {
		d, err := parseDurations(s)
		c.Lag = d
		return err
	})
	fs.DurationVar(&c.LagMax, "lag-max", 0, "if > --lag, each group's lag is drawn uniformly from [lag, lag-max]")
	fs.DurationVar(&c.Latency, "latency", 0, "latency added to a call (which still completes, even after the client gave up) with probability --latency-p")
	fs.Float64Var(&c.LatencyP, "latency-p", 0, "probability of --latency")
	fs.DurationVar(&c.HangTimeout, "hang-timeout", 0, "how long the sandbox holds a hung call when the client does not give up (0: the sandbox's 2m)")
	fs.DurationVar(&c.Timeout, "timeout", 150*time.Second, "give up a run this long after the first publish")
	fs.Func("worker-flags", "extra worker flags for one run, space-separated; repeat for runs side by side; "+
		"\"default\" (none) and \"previous\" ("+previousWorkerFlags+") are shorthands (default: default)", func(s string) error {
		c.Variants = append(c.Variants, s)
		return nil
	})
	fs.Func("seed", "seed of the sandbox's faults and of the choice of victims (default 1)", func(s string) error {
		_, err := fmt.Sscan(s, &c.Seed)
		return err
	})
	c.Seed = 1
	fs.IntVar(&c.Trace, "trace", 0, "print the history (ledger writes, API calls, kills) of the N requests that settled last and of the N slowest to be taken up after a kill")
	fs.BoolVar(&c.WarmLimiter, "warm-limiter", true, "take one grant of each shared limiter before the first publish, so the drain does not include "+
		"the limiter's one-time cold start (2 s on a fresh bucket; a running fleet has paid it long ago)")
}

// warmLimiters takes one grant from each of the fleet's shared limiters
// (the workers' keys: account = the sandbox SecretId, region ap-guangzhou),
// which writes their state: a fresh bucket's first grant waits out the
// cold start (docs/ratelimit.md), which a running fleet never sees again.
func warmLimiters(ctx context.Context, e *env) error {
	for _, action := range []string{actionRun, actionDescribe} {
		g, err := ratelimit.NewGlobal(ctx, e.js, ratelimit.Key(sandbox.DefaultSecretID, "ap-guangzhou", action),
			ratelimit.Config{Limit: apiLimit, Window: time.Second, Guard: 20 * time.Millisecond, Burst: 1, Replicas: e.topo.Replicas,
				Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return fmt.Errorf("warm limiter %s: %w", action, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = g.Wait(wctx)
		cancel()
		_ = g.Close()
		if err != nil {
			return fmt.Errorf("warm limiter %s: %w", action, err)
		}
	}
	return nil
}

func parseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "0" {
			out = append(out, 0)
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("want durations separated by commas, got %q", s)
		}
		out = append(out, d)
	}
	return out, nil
}

// expandVariant returns the worker flags of a variant.
func expandVariant(v string) []string {
	var out []string
	for _, f := range strings.Fields(v) {
		switch f {
		case "default":
		case "previous":
			out = append(out, strings.Fields(previousWorkerFlags)...)
		default:
			out = append(out, f)
		}
	}
	return out
}

// flagValue returns the value of --name in args (the last one given).
func flagValue(args []string, name string) (string, bool) {
	val, found := "", false
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if k, v, ok := strings.Cut(a, "="); ok && k == name {
			val, found = v, true
		} else if a == name && i+1 < len(args) {
			val, found = args[i+1], true
		}
	}
	return val, found
}

// killRecord is one SIGKILL and what the victim held at that moment.
type killRecord struct {
	At          time.Time
	Victim      string
	Replacement string
	Held        map[string]bool // request key → a call of the victim's was in flight
	// Per held key, from the SIGKILL: the first ledger write by another
	// handler (JetStream redelivered the message), and the first call or
	// lookup for its Name at the API. -1: none.
	Redelivered []time.Duration
	Next        []time.Duration
	NextInFlt   []time.Duration // Next, for the keys with a call in flight
}

// faultsSecond is one second of the run's timeline, from the first publish.
type faultsSecond struct {
	Run, Lookups int   // admitted at the API
	OpenMax      int   // most calls open inside the sandbox at once (sampled every 100 ms)
	AckPending   int   // consumer: delivered, not acknowledged (sampled once a second); -1 unknown
	Results      int64 // results so far (sampled once a second); -1 unknown
	Kills        int
}

type faultsRun struct {
	Variant   string
	Flags     []string
	Lag       time.Duration
	LagMax    time.Duration
	KillEvery time.Duration
	Requests  int

	Drained               bool
	T0, First, End        time.Time // first publish, first RunApplication at the API, last result or dead letter
	Results, DLQ          uint64
	RunGroups             int
	DupNames              int // Names with more than one run group
	Mismatched            int // results whose RunGroupId is not the sandbox's group of that Name
	MissingResult         int // run groups with no result
	MaxConcPerName        int
	Overlaps              int64
	RunAdmitted           int // RunApplication, admitted, during the drain
	RunAll                int // RunApplication arrivals, whole run
	Throttled             int // RunApplication + DescribeRunGroups refused by the sandbox's limiter
	Outcomes              map[string]int
	Lookups               int // DescribeRunGroups admitted, whole run
	Ambiguous             int // RunApplication answered InternalError or commit-then-fail
	LookupsQuiet          int // on Names no kill touched
	AmbiguousQuiet        int
	Kills                 []killRecord
	Timeline              []faultsSecond
	CPU                   cpuUsage
	LoadBefore, LoadAfter string
	Check                 string
	LedgerUndecoded       int
	Traces                []string
}

func (r faultsRun) Drain() time.Duration { return r.End.Sub(r.T0) }

func (r faultsRun) CallRate() float64 {
	if r.Drain() <= 0 {
		return 0
	}
	return float64(r.RunAdmitted) / r.Drain().Seconds()
}

func (r faultsRun) Goodput() float64 {
	if r.Drain() <= 0 {
		return 0
	}
	return float64(r.Results) / r.Drain().Seconds()
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// recovery gathers the next-call latencies of every kill.
func (r faultsRun) recovery() (all, inFlight []time.Duration, never int, redelivered []time.Duration) {
	for _, k := range r.Kills {
		for _, d := range k.Next {
			if d < 0 {
				never++
				continue
			}
			all = append(all, d)
		}
		for _, d := range k.NextInFlt {
			if d >= 0 {
				inFlight = append(inFlight, d)
			}
		}
		for _, d := range k.Redelivered {
			if d >= 0 {
				redelivered = append(redelivered, d)
			}
		}
	}
	for _, s := range [][]time.Duration{all, inFlight, redelivered} {
		slices.Sort(s)
	}
	return all, inFlight, never, redelivered
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(q * float64(len(ds)-1))
	return ds[i]
}

func (r faultsRun) meets() (bool, []string) {
	var miss []string
	if !r.Drained {
		miss = append(miss, "not drained")
	}
	if r.Drain() > faultsTargetDrain {
		miss = append(miss, fmt.Sprintf("drain %.1f s > %v", r.Drain().Seconds(), faultsTargetDrain))
	}
	if r.CallRate() < faultsTargetRate {
		miss = append(miss, fmt.Sprintf("%.2f calls/s < %.0f", r.CallRate(), faultsTargetRate))
	}
	if r.DupNames > 0 || r.Mismatched > 0 {
		miss = append(miss, "duplicates")
	}
	if r.DLQ > 0 {
		miss = append(miss, "dead letters")
	}
	all, _, never, _ := r.recovery()
	if never > 0 || (len(all) > 0 && all[len(all)-1] > faultsTargetRecovery) {
		miss = append(miss, "recovery > 10 s")
	}
	if r.Lag == 0 && r.LagMax == 0 && ratio(r.LookupsQuiet, r.AmbiguousQuiet) > faultsTargetLookupAmb {
		miss = append(miss, "lookups per ambiguity > 1.5")
	}
	return len(miss) == 0, miss
}

func runFaults(ctx context.Context, h *harness, cfg faultsConfig) (string, error) {
	if len(cfg.Variants) == 0 {
		cfg.Variants = []string{"default"}
	}
	var runs []faultsRun
	for _, v := range cfg.Variants {
		for _, lag := range cfg.Lag {
			for _, ke := range cfg.KillEvery {
				r, err := faultsOnce(ctx, h, cfg, v, lag, ke)
				if err != nil {
					return "", fmt.Errorf("faults %q lag %v kill-every %v: %w", v, lag, ke, err)
				}
				all, _, _, _ := r.recovery()
				h.logf("faults %q lag %v kill-every %v: drained %v in %.1f s, %.2f RunApplication/s, %d results, %d dead letters, %d duplicate Names, lookups/ambiguity %.2f, next call after a kill p50 %v max %v",
					v, lag, ke, r.Drained, r.Drain().Seconds(), r.CallRate(), r.Results, r.DLQ, r.DupNames,
					ratio(r.LookupsQuiet, r.AmbiguousQuiet), quantile(all, 0.5).Round(10*time.Millisecond), quantile(all, 1).Round(10*time.Millisecond))
				runs = append(runs, r)
			}
		}
	}
	return faultsMarkdown(cfg, runs), nil
}

// modes returns the commit-then-fail modes (sandbox.Faults.Validate
// rejects unknown ones).
func (c faultsConfig) modes() []sandbox.CommitFailMode {
	var ms []sandbox.CommitFailMode
	for _, f := range strings.Split(c.CTFModes, ",") {
		if f = strings.TrimSpace(f); f != "" {
			ms = append(ms, sandbox.CommitFailMode(f))
		}
	}
	return ms
}

func faultsOnce(ctx context.Context, h *harness, cfg faultsConfig, variant string, lag, killEvery time.Duration) (faultsRun, error) {
	flags := expandVariant(variant)
	r := faultsRun{Variant: variant, Flags: flags, Lag: lag, LagMax: cfg.LagMax, KillEvery: killEvery, Requests: cfg.Requests, Outcomes: map[string]int{}}
	modes := cfg.modes()
	faults := sandbox.Faults{
		CommitThenFailP: cfg.CTF, CommitThenFailModes: modes, InternalErrorP: cfg.InternalError,
		Latency: cfg.Latency, LatencyP: cfg.LatencyP, Actions: []string{actionRun},
	}
	if err := faults.Validate(); err != nil {
		return r, err
	}
	var ackWait time.Duration
	if v, ok := flagValue(flags, "ack-wait"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return r, fmt.Errorf("--ack-wait %q: %w", v, err)
		}
		ackWait = d
	}
	h.logf("faults: %d requests, %d workers %v, ctf %.2f %v, internal error %.2f, lag %v, kill every %v",
		cfg.Requests, cfg.Workers, flags, cfg.CTF, modes, cfg.InternalError, lag, killEvery)
	e, err := h.newEnv(ctx, "faults", envOptions{
		SandboxRate: apiLimit, Tap: true,
		Sandbox: func(o *sandbox.Options) {
			o.Seed = int64(cfg.Seed)
			o.Faults = faults
			o.Visibility = sandbox.Visibility{Lag: lag, LagMax: cfg.LagMax}
			o.HangTimeout = cfg.HangTimeout
		},
		Topology: func(t *queue.Topology) {
			if ackWait > 0 {
				t.AckWait = ackWait
			}
		},
	})
	if err != nil {
		return r, err
	}
	defer e.close()
	lw, err := watchLedger(ctx, e.js, e.topo.LedgerBucket)
	if err != nil {
		return r, err
	}
	defer lw.stop()

	args := append([]string{"--rate", "20", "--rate-limit-scope", "global"}, flags...)
	r.LoadBefore = loadAvg()
	meter := newCPUMeter()
	if err := startFleet(e, meter, cfg.Workers, args...); err != nil {
		return r, err
	}
	var mu sync.Mutex // guards current, e.workers and r.Kills while the killer runs
	current := slices.Clone(e.workers)
	if err := waitConsuming(ctx, e, cfg.Workers, 30*time.Second); err != nil {
		return r, err
	}

	if cfg.WarmLimiter {
		if err := warmLimiters(ctx, e); err != nil {
			return r, err
		}
	}

	r.T0 = time.Now()
	stopSampler := make(chan struct{})
	samplerDone := make(chan []faultsSecond, 1)
	go func() { samplerDone <- sampleFaults(ctx, e, r.T0, stopSampler) }()
	if err := preloadAsync(ctx, e.js, e.topo, "f", cfg.Requests); err != nil {
		close(stopSampler)
		return r, err
	}

	stopKiller := make(chan struct{})
	killerErr := make(chan error, 1)
	if killEvery > 0 {
		go func() {
			rng := rand.New(rand.NewPCG(cfg.Seed, 0x6b111))
			gen := make([]int, cfg.Workers)
			next := r.T0.Add(killEvery)
			for {
				select {
				case <-stopKiller:
					killerErr <- nil
					return
				case <-time.After(time.Until(next)):
				}
				i := rng.IntN(cfg.Workers)
				mu.Lock()
				v := current[i]
				mu.Unlock()
				meter.sample(v.pid())
				at := time.Now()
				v.kill()
				gen[i]++
				// A new name per process, as a Deployment's new pod has:
				// the ledger's lease owners tell the victim's keys apart.
				id := fmt.Sprintf("w%d-%d", i+1, gen[i]+1)
				p, err := e.h.start(id, e.dir, e.workerArgs(id, args...), sandboxCredentials)
				if err != nil {
					killerErr <- fmt.Errorf("restart %s: %w", id, err)
					return
				}
				meter.track(p.pid())
				mu.Lock()
				current[i] = p
				e.workers = append(e.workers, p)
				r.Kills = append(r.Kills, killRecord{At: at, Victim: v.name, Replacement: id})
				mu.Unlock()
				next = next.Add(killEvery)
			}
		}()
	} else {
		killerErr <- nil
	}

	deadline := r.T0.Add(cfg.Timeout)
	var waitErr error
	for {
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			waitErr = err
			break
		}
		res, err1 := streamMsgs(ctx, e.js, e.topo.ResultsStream)
		dlq, err2 := streamMsgs(ctx, e.js, e.topo.DLQStream)
		if err1 == nil && err2 == nil && res+dlq >= uint64(cfg.Requests) {
			r.Drained = true
			break
		}
		mu.Lock()
		var dead *proc
		for _, w := range current {
			if !w.running() {
				dead = w
			}
		}
		mu.Unlock()
		if dead != nil && killEvery == 0 {
			waitErr = fmt.Errorf("%s exited during the run: %v\n%s", dead.name, dead.err, dead.logTail(20))
			break
		}
		if time.Now().After(deadline) {
			h.logf("faults: timeout with %d results and %d dead letters of %d", res, dlq, cfg.Requests)
			break
		}
	}
	close(stopKiller)
	if err := <-killerErr; err != nil && waitErr == nil {
		waitErr = err
	}
	r.CPU = meter.read()
	r.LoadAfter = loadAvg()
	mu.Lock()
	for _, w := range current {
		if !w.running() && waitErr == nil {
			waitErr = fmt.Errorf("%s exited during the run: %v\n%s", w.name, w.err, w.logTail(20))
		}
	}
	mu.Unlock()
	if waitErr != nil {
		close(stopSampler)
		return r, waitErr
	}
	e.stopWorkers()
	close(stopSampler)
	r.Timeline = <-samplerDone
	_, _, r.Check = e.settle(actionRun)

	// Outcomes at the end of the drain: the results and dead letters.
	r.End = r.T0
	for _, name := range []string{e.topo.ResultsStream, e.topo.DLQStream} {
		s, err := e.js.Stream(ctx, name)
		if err != nil {
			return r, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return r, err
		}
		if info.State.Msgs > 0 && info.State.LastTime.After(r.End) {
			r.End = info.State.LastTime
		}
		if name == e.topo.ResultsStream {
			r.Results = info.State.Msgs
		} else {
			r.DLQ = info.State.Msgs
		}
	}
	results, resultAt, err := readResults(ctx, e.js, e.topo)
	if err != nil {
		return r, err
	}

	// The sandbox's registry: one run group per Name, and it is the result's.
	groups := map[string][]string{}
	for _, g := range e.sb.RunGroups() {
		groups[g.Name] = append(groups[g.Name], g.RunGroupId)
	}
	r.RunGroups = len(e.sb.RunGroups())
	for name, ids := range groups {
		if len(ids) > 1 {
			r.DupNames++
		}
		if id, ok := results[name]; !ok {
			r.MissingResult++
		} else if !slices.Contains(ids, id) {
			r.Mismatched++
		}
	}
	st := e.sb.Stats()
	r.MaxConcPerName, r.Overlaps = st.MaxConcurrentRunApplicationPerName, st.ConcurrentRunApplicationOverlaps
	lw.mu.Lock()
	r.LedgerUndecoded = lw.bad
	lw.mu.Unlock()

	// What the tap saw.
	calls := e.tap.snapshot()
	byName := map[string][]*tapCall{}
	drain := window{r.T0, r.End.Add(time.Nanosecond)}
	for _, c := range calls {
		o := c.Outcome()
		if o == "throttled" {
			r.Throttled++
		}
		byName[c.Name] = append(byName[c.Name], c)
		switch c.Action {
		case actionRun:
			r.RunAll++
			r.Outcomes[o]++
			if r.First.IsZero() {
				r.First = c.At
			}
			if o != "throttled" && drain.contains(c.At) {
				r.RunAdmitted++
			}
		case actionDescribe:
			if o != "throttled" {
				r.Lookups++
			}
		}
	}
	for o, n := range r.Outcomes {
		if o == "internal_error" || strings.HasPrefix(o, "commit_then_fail_") {
			r.Ambiguous += n
		}
	}

	// Kills: what each victim held, and how soon it was taken up again.
	const slack = 100 * time.Millisecond
	touched := map[string]bool{}
	for i := range r.Kills {
		k := &r.Kills[i]
		k.Held = lw.heldBy(k.Victim, k.At, slack)
		for key, inFlight := range k.Held {
			touched[key] = true
			red := time.Duration(-1)
			if t, ok := lw.firstAfter(key, k.At.Add(slack)); ok {
				red = t.Sub(k.At)
			}
			next := time.Duration(-1)
			for _, c := range byName[key] {
				if c.At.After(k.At.Add(slack)) {
					next = c.At.Sub(k.At)
					break
				}
			}
			k.Redelivered = append(k.Redelivered, red)
			k.Next = append(k.Next, next)
			if inFlight {
				k.NextInFlt = append(k.NextInFlt, next)
			}
		}
	}
	for name, cs := range byName {
		if touched[name] {
			continue
		}
		for _, c := range cs {
			o := c.Outcome()
			switch {
			case c.Action == actionDescribe && o != "throttled":
				r.LookupsQuiet++
			case c.Action == actionRun && (o == "internal_error" || strings.HasPrefix(o, "commit_then_fail_")):
				r.AmbiguousQuiet++
			}
		}
	}

	// The per-second admitted counts of the timeline.
	for _, c := range calls {
		sec := int(floorDiv(c.At.Sub(r.T0), time.Second))
		if sec < 0 || sec >= len(r.Timeline) || c.Outcome() == "throttled" {
			continue
		}
		switch c.Action {
		case actionRun:
			r.Timeline[sec].Run++
		case actionDescribe:
			r.Timeline[sec].Lookups++
		}
	}
	for _, k := range r.Kills {
		if sec := int(k.At.Sub(r.T0) / time.Second); sec >= 0 && sec < len(r.Timeline) {
			r.Timeline[sec].Kills++
		}
	}
	if cfg.Trace > 0 {
		r.Traces = traces(r, cfg.Trace, resultAt, byName, lw)
	}
	return r, nil
}

// traces renders the history of the requests that settled last, and of
// those slowest to be taken up after a kill.
func traces(r faultsRun, n int, resultAt map[string]time.Time, byName map[string][]*tapCall, lw *ledgerWatch) []string {
	type keyAt struct {
		key string
		at  time.Duration
	}
	var last, slow []keyAt
	for k, t := range resultAt {
		last = append(last, keyAt{k, t.Sub(r.T0)})
	}
	for name := range byName {
		if _, ok := resultAt[name]; !ok && name != "" {
			last = append(last, keyAt{name, 1 << 62}) // never settled
		}
	}
	for _, k := range r.Kills {
		for key := range k.Held {
			next := time.Duration(-1)
			for _, c := range byName[key] {
				if c.At.After(k.At.Add(100 * time.Millisecond)) {
					next = c.At.Sub(k.At)
					break
				}
			}
			if next < 0 {
				next = 1 << 62
			}
			slow = append(slow, keyAt{key, next})
		}
	}
	desc := func(a, b keyAt) int { return int((b.at - a.at) >> 20) }
	slices.SortFunc(last, desc)
	slices.SortFunc(slow, desc)
	seen := map[string]bool{}
	var keys []string
	for _, l := range [][]keyAt{last, slow} {
		for i := 0; i < len(l) && i < n; i++ {
			if !seen[l[i].key] {
				seen[l[i].key] = true
				keys = append(keys, l[i].key)
			}
		}
	}
	rel := func(t time.Time) string { return fmt.Sprintf("%+8.3fs", t.Sub(r.T0).Seconds()) }
	var out []string
	for _, key := range keys {
		type line struct {
			at   time.Time
			text string
		}
		var ls []line
		for _, c := range byName[key] {
			c.mu.Lock()
			done := c.done
			c.mu.Unlock()
			d := "still open"
			if !done.IsZero() {
				d = fmt.Sprintf("%.3fs", done.Sub(c.At).Seconds())
			}
			ls = append(ls, line{c.At, fmt.Sprintf("%s  api     %s → %s (%s)", rel(c.At), c.Action, c.Outcome(), d)})
		}
		lw.mu.Lock()
		for _, u := range lw.updates[key] {
			t := fmt.Sprintf("%s  ledger  %s", rel(u.At), u.State)
			if u.LeaseOwner != "" {
				t += fmt.Sprintf(" lease=%s until %s", u.LeaseOwner, rel(u.LeaseUntil))
			}
			if u.InFlightOwner != "" {
				t += fmt.Sprintf(" in_flight=%s deadline %s", u.InFlightOwner, rel(u.InFlightDeadline))
			}
			ls = append(ls, line{u.At, t})
		}
		lw.mu.Unlock()
		for _, k := range r.Kills {
			if inFlight, held := k.Held[key]; held {
				ls = append(ls, line{k.At, fmt.Sprintf("%s  KILL    %s (held it; call in flight: %v)", rel(k.At), k.Victim, inFlight)})
			}
		}
		if t, ok := resultAt[key]; ok {
			ls = append(ls, line{t, fmt.Sprintf("%s  result", rel(t))})
		}
		slices.SortStableFunc(ls, func(a, b line) int { return a.at.Compare(b.at) })
		var b strings.Builder
		fmt.Fprintf(&b, "%s:\n", key)
		for _, l := range ls {
			b.WriteString("  " + l.text + "\n")
		}
		out = append(out, b.String())
	}
	return out
}

// waitConsuming waits until n workers have a pull request waiting (they are
// bound and idle), so the drain is timed from the first publish.
func waitConsuming(ctx context.Context, e *env, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := e.js.Consumer(cctx, e.topo.RequestsStream, e.topo.Consumer)
		if err == nil {
			var info *jetstream.ConsumerInfo
			if info, err = c.Info(cctx); err == nil && info.NumWaiting >= n {
				cancel()
				return nil
			}
		}
		cancel()
		if err := e.checkWorkers(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			e.h.logf("faults: the workers did not all wait for messages within %v; starting anyway", timeout)
			return nil
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// sampleFaults records, per second from t0, the most calls open in the
// sandbox (every 100 ms), and once a second the consumer's ack-pending count
// and the results so far.
func sampleFaults(ctx context.Context, e *env, t0 time.Time, stop <-chan struct{}) []faultsSecond {
	var secs []faultsSecond
	at := func(t time.Time) *faultsSecond {
		i := int(t.Sub(t0) / time.Second)
		for len(secs) <= i {
			secs = append(secs, faultsSecond{AckPending: -1, Results: -1})
		}
		return &secs[i]
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastInfo := time.Time{}
	for {
		select {
		case <-stop:
			return secs
		case <-ctx.Done():
			return secs
		case now := <-tick.C:
			s := at(now)
			s.OpenMax = max(s.OpenMax, e.tap.openNow())
			if now.Sub(lastInfo) < time.Second {
				continue
			}
			lastInfo = now
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			if c, err := e.js.Consumer(cctx, e.topo.RequestsStream, e.topo.Consumer); err == nil {
				if info, err := c.Info(cctx); err == nil {
					s.AckPending = info.NumAckPending
				}
			}
			cancel()
			if n, err := streamMsgs(ctx, e.js, e.topo.ResultsStream); err == nil {
				s.Results = int64(n)
			}
		}
	}
}

// readResults returns every result's RunGroupId, and when it was published,
// by request key.
func readResults(ctx context.Context, js jetstream.JetStream, t queue.Topology) (map[string]string, map[string]time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := streamMsgs(ctx, js, t.ResultsStream)
	if err != nil || n == 0 {
		return map[string]string{}, map[string]time.Time{}, err
	}
	c, err := js.OrderedConsumer(ctx, t.ResultsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, nil, err
	}
	out := make(map[string]string, n)
	at := make(map[string]time.Time, n)
	for uint64(len(out)) < n {
		batch, err := c.Fetch(int(min(n-uint64(len(out)), 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, nil, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			res, err := client.DecodeResult(m.Data())
			if err != nil {
				return nil, nil, fmt.Errorf("decode result: %w", err)
			}
			out[res.Key] = res.RunGroupID
			if md, err := m.Metadata(); err == nil {
				at[res.Key] = md.Timestamp
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, nil, err
		}
		if got == 0 {
			return out, at, fmt.Errorf("read %d of %d results", len(out), n)
		}
	}
	return out, at, nil
}

func fmtFlags(fl []string) string {
	if len(fl) == 0 {
		return "(defaults)"
	}
	return "`" + strings.Join(fl, " ") + "`"
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func faultsMarkdown(cfg faultsConfig, runs []faultsRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Goodput under faults: `go run ./bench faults`\n\n")
	fmt.Fprintf(&b, "%d requests published at once (asynchronously, after the workers are waiting for messages) to %d workers "+
		"(`--rate 20 --rate-limit-scope global`, plus the flags shown); sandbox limit %d/s per action; RunApplication "+
		"commit-then-fail %.0f%% (%s, round robin), InternalError %.0f%%", cfg.Requests, cfg.Workers, apiLimit, 100*cfg.CTF, cfg.CTFModes, 100*cfg.InternalError)
	if cfg.LatencyP > 0 {
		fmt.Fprintf(&b, ", latency %v on %.0f%% of calls", cfg.Latency, 100*cfg.LatencyP)
	}
	hang := cfg.HangTimeout
	if hang == 0 {
		hang = sandbox.DefaultHangTimeout
	}
	fmt.Fprintf(&b, "; a hung call is held until the client gives up (at most %v). A random worker is SIGKILLed every "+
		"`kill every` from the first publish and restarted at once under a new name (a Deployment's new pod), so %d workers "+
		"run except for the restart's few hundred milliseconds. Seed %d.\n\n", hang, cfg.Workers, cfg.Seed)
	b.WriteString("Everything is judged from the API's side: the harness serves the sandbox behind a tap that records every call's " +
		"arrival, action and Name, and the sandbox's registry of run groups. **Drain** is first publish → last result (or dead letter), " +
		"from the streams' timestamps. **Calls/s** counts admitted RunApplication arrivals during the drain. **Duplicates**: Names " +
		"with more than one run group, or a result naming another group than the sandbox's. **Lookups per ambiguity**: admitted " +
		"DescribeRunGroups calls ÷ RunApplication calls answered InternalError or commit-then-fail, over the Names no kill touched " +
		"(the kills add their own lookups; the whole-run figure is in the second table). **After a kill**: the keys the victim held are " +
		"read from the ledger (a KV watch: the last write before the kill names a live lease or a started call of the victim's " +
		"process); for each, the time from the SIGKILL to the first call or lookup for its Name at the API, and to the first " +
		"ledger write by another handler (JetStream redelivered the message).\n\n")

	b.WriteString("| worker flags | lag | kill every | drain | RunApplication calls/s during the drain (of 20) | results/s | results · dead letters · duplicates | lookups per ambiguity | kills · keys held | after a kill: next call or lookup p50 · p90 · max | targets |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range runs {
		drain := secs(r.Drain())
		if !r.Drained {
			drain = fmt.Sprintf("not drained in %v (%d of %d)", cfg.Timeout, r.Results+r.DLQ, r.Requests)
		}
		held := 0
		for _, k := range r.Kills {
			held += len(k.Held)
		}
		all, _, never, _ := r.recovery()
		rec := "—"
		if len(all) > 0 {
			rec = fmt.Sprintf("%s · %s · %s", secs(quantile(all, 0.5)), secs(quantile(all, 0.9)), secs(quantile(all, 1)))
		}
		if never > 0 {
			rec += fmt.Sprintf(" (%d never)", never)
		}
		ok, miss := r.meets()
		verdict := "met"
		if !ok {
			verdict = "**no**: " + strings.Join(miss, ", ")
		}
		fmt.Fprintf(&b, "| %s | %v | %v | %s | %.2f (%.0f%%) | %.2f | %d · %d · %d | %.2f | %d · %d | %s | %s |\n",
			fmtFlags(r.Flags), r.Lag, r.KillEvery, drain, r.CallRate(), 100*r.CallRate()/apiLimit, r.Goodput(),
			r.Results, r.DLQ, r.DupNames+r.Mismatched, ratio(r.LookupsQuiet, r.AmbiguousQuiet), len(r.Kills), held, rec, verdict)
	}
	b.WriteString("\n| worker flags | lag | kill every | first publish → first call | RunApplication calls (whole run) | outcomes: success · internal_error · 502 · drop · hang · duplicate_name · other | lookups · per ambiguity (whole run) | throttled | after a kill, keys with a call in flight: next call p50 · max | JetStream redelivery after a kill p50 · max | max calls open at the API | max concurrent calls per Name · overlaps | run groups · without result | CPU cores: workers · harness · others | load avg before → after | log check |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, r := range runs {
		_, inFlt, _, red := r.recovery()
		fl, rd := "—", "—"
		if len(inFlt) > 0 {
			fl = fmt.Sprintf("%s · %s (%d keys)", secs(quantile(inFlt, 0.5)), secs(quantile(inFlt, 1)), len(inFlt))
		}
		if len(red) > 0 {
			rd = fmt.Sprintf("%s · %s", secs(quantile(red, 0.5)), secs(quantile(red, 1)))
		}
		known := 0
		for _, o := range []string{"success", "internal_error", "commit_then_fail_bad_gateway", "commit_then_fail_drop", "commit_then_fail_hang", "duplicate_name", "throttled"} {
			known += r.Outcomes[o]
		}
		openMax := 0
		for _, s := range r.Timeline {
			openMax = max(openMax, s.OpenMax)
		}
		first := "—"
		if !r.First.IsZero() {
			first = fmt.Sprintf("%.0f ms", float64(r.First.Sub(r.T0))/float64(time.Millisecond))
		}
		fmt.Fprintf(&b, "| %s | %v | %v | %s | %d | %d · %d · %d · %d · %d · %d · %d | %d · %.2f | %d | %s | %s | %d | %d · %d | %d · %d | %.2f · %.2f · %.2f | %s → %s | %s |\n",
			fmtFlags(r.Flags), r.Lag, r.KillEvery, first, r.RunAll,
			r.Outcomes["success"], r.Outcomes["internal_error"], r.Outcomes["commit_then_fail_bad_gateway"], r.Outcomes["commit_then_fail_drop"],
			r.Outcomes["commit_then_fail_hang"], r.Outcomes["duplicate_name"], r.RunAll-known,
			r.Lookups, ratio(r.Lookups, r.Ambiguous), r.Throttled, fl, rd, openMax, r.MaxConcPerName, r.Overlaps,
			r.RunGroups, r.MissingResult, r.CPU.Cores(r.CPU.Workers), r.CPU.Cores(r.CPU.Harness), r.CPU.Cores(r.CPU.Others()),
			r.LoadBefore, r.LoadAfter, r.Check)
	}
	b.WriteString("\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "<details><summary>Timeline: %s, lag %v, kill every %v</summary>\n\n", fmtFlags(r.Flags), r.Lag, r.KillEvery)
		b.WriteString("Per second from the first publish: RunApplication and DescribeRunGroups calls admitted, the most calls open " +
			"inside the sandbox at once (hung calls stay open until the client gives up), messages delivered and not acknowledged " +
			"(the consumer's ack pending: in handlers, or stranded with a killed worker until AckWait), results so far, kills (`K`).\n\n```\n")
		b.WriteString("   s  run look open ackp results\n")
		for i, s := range r.Timeline {
			ackp, res := "   -", "      -"
			if s.AckPending >= 0 {
				ackp = fmt.Sprintf("%4d", s.AckPending)
			}
			if s.Results >= 0 {
				res = fmt.Sprintf("%7d", s.Results)
			}
			fmt.Fprintf(&b, "%4d %4d %4d %4d %s %s %s\n", i, s.Run, s.Lookups, s.OpenMax, ackp, res, strings.Repeat("K", s.Kills))
		}
		b.WriteString("```\n\n")
		if len(r.Kills) > 0 {
			b.WriteString("| kill at | victim | keys held (call in flight) | next call or lookup: min · max | JetStream redelivery: min · max |\n|---:|---|---:|---:|---:|\n")
			for _, k := range r.Kills {
				inFlight := 0
				for _, f := range k.Held {
					if f {
						inFlight++
					}
				}
				nx, rd := slices.Clone(k.Next), slices.Clone(k.Redelivered)
				slices.Sort(nx)
				slices.Sort(rd)
				fmt.Fprintf(&b, "| %s | %s | %d (%d) | %s | %s |\n", secs(k.At.Sub(r.T0)), k.Victim, len(k.Held), inFlight, minMaxDur(nx), minMaxDur(rd))
			}
			b.WriteString("\n")
		}
		if len(r.Traces) > 0 {
			b.WriteString("Histories (times from the first publish; owners are `<worker>/<process nonce>/<handler>`):\n\n```\n")
			for _, t := range r.Traces {
				b.WriteString(t)
			}
			b.WriteString("```\n\n")
		}
		b.WriteString("</details>\n\n")
	}
	return b.String()
}

func minMaxDur(ds []time.Duration) string {
	if len(ds) == 0 {
		return "—"
	}
	s := ""
	if ds[0] < 0 {
		n := 0
		for _, d := range ds {
			if d < 0 {
				n++
			}
		}
		s = fmt.Sprintf(" (%d none)", n)
		ds = ds[n:]
		if len(ds) == 0 {
			return "none" + s
		}
	}
	return fmt.Sprintf("%s · %s%s", secs(ds[0]), secs(ds[len(ds)-1]), s)
}
