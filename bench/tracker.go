package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/omicsq/omicsq/sandbox"
)

// The tracker benchmark is issue 13's cost acceptance: with N active run
// groups the run tracker makes ceil(N/100) DescribeRunGroups calls per poll
// cycle (plus a few DescribeRuns) and stays within its share of the
// Describe budget. The groups are real: a seeding worker submits N requests
// to the sandbox (unlimited, through real HTTP and TC3 signing), which
// executes them for hours, so they all stay Running; then a second worker
// process runs the tracker exactly as deployed (--rate 20, --tracker-share
// 0.25, the fleet-wide limiters) and the harness follows its cycles from
// its own metrics and the sandbox's record of every call.

// trackerProject is the ProjectId of requestBody: the tracker resolves it
// from the ledger's digest only when --tracker-projects lists it.
const trackerProject = "prj-peaceful-pink-bird-631828"

const actionDescribeRuns = "DescribeRuns"

type trackerConfig struct {
	Groups      int
	Batches     int
	Rows        int
	Rate        float64
	Share       float64
	Cycles      int
	Interval    time.Duration
	RunDuration time.Duration
	Timeout     time.Duration
}

func (c *trackerConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Groups, "groups", 10000, "active run groups (requests submitted, then followed)")
	fs.IntVar(&c.Batches, "batches", 0, "how many of the groups are table batches (the rest are singletons)")
	fs.IntVar(&c.Rows, "rows", 4, "runs (table rows) per batch")
	fs.Float64Var(&c.Rate, "rate", 20, "the tracker worker's --rate (API calls/s per action, fleet-wide)")
	fs.Float64Var(&c.Share, "share", 0.25, "the tracker worker's --tracker-share")
	fs.IntVar(&c.Cycles, "cycles", 3, "poll cycles measured after every group was announced")
	fs.DurationVar(&c.Interval, "interval", 5*time.Second, "the tracker worker's --tracker-interval")
	fs.DurationVar(&c.RunDuration, "run-duration", 2*time.Hour, "how long each run executes in the sandbox (long: every group stays active)")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "give up this long after the tracker worker starts")
}

// trackerCycle is one poll cycle as the harness saw it: the tracker's own
// gauges at the cycle's end, and the sandbox's calls between the harness's
// sightings of the previous cycle's end and this one's.
type trackerCycle struct {
	N                int
	Warmup           bool
	End              time.Time
	GroupCalls       int // omicsq_tracker_cycle_describe_calls{action="DescribeRunGroups"}
	RunsCalls        int
	APIGroups        int // DescribeRunGroups arrivals at the sandbox in the cycle's window
	APIRuns          int
	Events           int // omicsq_tracker_events_total increase
	Duration         time.Duration
	LagMax, LagAtEnd float64
	Active           int // run groups followed at the cycle's end
}

type trackerRun struct {
	Cfg                   trackerConfig
	PublishTime, SeedTime time.Duration
	Learned, Announced    time.Duration // from the tracker worker's start
	Cycles                []trackerCycle
	Measured              window
	APICalls, APIMax1s    int // DescribeRunGroups at the sandbox in the measured window
	RunsCalls             int
	SandboxMax1s          int // DescribeRunGroups, whole run
	Throttled, Errors     float64
	CPU                   time.Duration // the tracker worker, measured window
	RSS                   memInfo
	Check                 string
	LoadBefore, LoadAfter string
}

// trackerSample is one scrape of the tracker worker's metrics.
type trackerSample struct {
	At                        time.Time
	Cycles                    int
	DurationSum               float64
	GroupCalls, RunsCalls     int
	Lag                       float64
	Events, GroupEvents       int
	Active, Errors, Throttled float64
}

func scrapeTracker(pid int) (trackerSample, bool) {
	p := workerMetrics(pid)
	if p == nil {
		return trackerSample{}, false
	}
	s := trackerSample{At: time.Now(),
		Cycles:      int(p.sum("omicsq_tracker_cycles_total")),
		DurationSum: p.sum("omicsq_tracker_cycle_duration_seconds_sum"),
		GroupCalls:  int(p.sum("omicsq_tracker_cycle_describe_calls", `action="DescribeRunGroups"`)),
		RunsCalls:   int(p.sum("omicsq_tracker_cycle_describe_calls", `action="DescribeRuns"`)),
		Lag:         p.sum("omicsq_tracker_lag_seconds"),
		Events:      int(p.sum("omicsq_tracker_events_total")),
		GroupEvents: int(p.sum("omicsq_tracker_events_total", `kind="group"`)),
		Active:      p.sum("omicsq_tracker_run_groups"),
		Errors:      p.sum("omicsq_tracker_errors_total"),
		Throttled:   p.sum("omicsq_tracker_describe_calls_total", `class="throttled"`),
	}
	return s, true
}

func runTracker(ctx context.Context, h *harness, cfg trackerConfig) (string, error) {
	if cfg.Groups < 1 || cfg.Cycles < 1 || cfg.Share <= 0 || cfg.Share > 1 || cfg.Rate < 0 ||
		cfg.Batches < 0 || cfg.Batches > cfg.Groups || cfg.Rows < 1 {
		return "", errors.New("tracker: want --groups and --cycles >= 1, 0 < --share <= 1, --rate >= 0, 0 <= --batches <= --groups, --rows >= 1")
	}
	r := trackerRun{Cfg: cfg}
	e, err := h.newEnv(ctx, "tracker", envOptions{SandboxRate: 0, Record: true, Sandbox: func(o *sandbox.Options) {
		o.Execution = sandbox.Execution{Enabled: true, DurationMin: cfg.RunDuration}
	}})
	if err != nil {
		return "", err
	}
	defer e.close()
	if err := seedGroups(ctx, e, cfg, &r); err != nil {
		return "", err
	}
	if err := followTracker(ctx, e, cfg, &r); err != nil {
		return "", err
	}
	return trackerMarkdown(r), nil
}

// seedGroups has a worker submit cfg.Groups requests with nothing limited,
// then stops it: the run groups, their ledger entries and their results are
// the ones a fleet makes.
func seedGroups(ctx context.Context, e *env, cfg trackerConfig, r *trackerRun) error {
	h := e.h
	start := time.Now()
	if err := preloadBodies(ctx, e.js, e.topo, "trk", cfg.Groups, func(i int, name string) []byte {
		return trackerBody(name, i, cfg)
	}); err != nil {
		return err
	}
	r.PublishTime = time.Since(start)
	start = time.Now()
	seeder, err := e.startWorker("seed", "--rate", "0", "--concurrency", "64", "--tracker=false")
	if err != nil {
		return err
	}
	deadline := start.Add(max(time.Minute, time.Duration(cfg.Groups)*5*time.Millisecond))
	for {
		n, _ := streamMsgs(ctx, e.js, e.topo.ResultsStream)
		if n >= uint64(cfg.Groups) {
			break
		}
		if err := e.checkWorkers(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("seeding: %d of %d results after %v", n, cfg.Groups, time.Since(start).Round(time.Second))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	r.SeedTime = time.Since(start)
	seeder.stop(15 * time.Second)
	e.workers = e.workers[:0]
	if got := len(e.sb.RunGroups()); got != cfg.Groups {
		return fmt.Errorf("seeding: the sandbox holds %d run groups, want %d", got, cfg.Groups)
	}
	h.logf("tracker: %d requests published in %v, submitted in %v", cfg.Groups,
		r.PublishTime.Round(time.Millisecond), r.SeedTime.Round(time.Millisecond))
	return nil
}

// trackerBody is requestBody, made a table batch of cfg.Rows rows for every
// (Groups/Batches)-th request, so batches are spread over the tracker's
// chunks of 100.
func trackerBody(name string, i int, cfg trackerConfig) []byte {
	body := requestBody(name)
	if cfg.Batches == 0 || i%(cfg.Groups/cfg.Batches) != 0 || i/(cfg.Groups/cfg.Batches) >= cfg.Batches {
		return body
	}
	var req map[string]any
	_ = json.Unmarshal(body, &req)
	rows := make([]string, cfg.Rows)
	for r := range rows {
		rows[r] = fmt.Sprintf("row-%s-%d", name, r)
	}
	req["TableId"], req["TableRowUuids"] = "tab-brisk-olive-yak-300001", rows
	out, _ := json.Marshal(req)
	return out
}

// followTracker starts the tracker worker and samples its metrics until
// cfg.Cycles cycles have run after every group was announced.
func followTracker(ctx context.Context, e *env, cfg trackerConfig, r *trackerRun) error {
	r.LoadBefore = loadAvg()
	p, err := e.startWorker("tracker", "--rate", strconv.FormatFloat(cfg.Rate, 'f', -1, 64),
		"--tracker-share", strconv.FormatFloat(cfg.Share, 'f', -1, 64), "--tracker-interval", cfg.Interval.String(),
		"--tracker-projects", trackerProject)
	if err != nil {
		return err
	}
	f := &cycleFollower{e: e, cfg: cfg, r: r, pid: p.pid(), start: time.Now()}
	for f.measured < cfg.Cycles {
		if err := e.checkWorkers(); err != nil {
			return err
		}
		if time.Since(f.start) > cfg.Timeout {
			return fmt.Errorf("tracker: %d of %d cycles measured within %v", f.measured, cfg.Cycles, cfg.Timeout)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
		if s, ok := scrapeTracker(p.pid()); ok {
			f.observe(s)
		}
	}
	cpuTo, _ := procCPU(p.pid())
	r.CPU = cpuTo - f.cpuFrom
	r.RSS, _ = procMem(p.pid())
	r.LoadAfter = loadAvg()
	st, as, check := e.settle(actionDescribe)
	r.Check, r.SandboxMax1s = check, st.MaxArrivals1s
	r.APICalls, r.APIMax1s = len(inWindow(as, r.Measured)), maxSliding(as, r.Measured, all)
	r.RunsCalls = len(inWindow(e.rec.snapshot(actionDescribeRuns), r.Measured))
	return nil
}

// cycleFollower turns scrapes of the tracker worker into cycles.
type cycleFollower struct {
	e        *env
	cfg      trackerConfig
	r        *trackerRun
	pid      int
	start    time.Time
	prev     trackerSample
	prevEnd  time.Time
	lagMax   float64
	measured int
	cpuFrom  time.Duration
}

func (f *cycleFollower) observe(s trackerSample) {
	r, prev, n := f.r, f.prev, f.cfg.Groups
	f.lagMax = max(f.lagMax, s.Lag)
	if r.Learned == 0 && s.Active >= float64(n) {
		r.Learned = time.Since(f.start)
	}
	if r.Announced == 0 && s.GroupEvents >= n {
		r.Announced = time.Since(f.start)
	}
	if s.Cycles <= prev.Cycles {
		return
	}
	c := trackerCycle{N: s.Cycles, End: s.At, GroupCalls: s.GroupCalls, RunsCalls: s.RunsCalls,
		Events: s.Events - prev.Events, LagMax: f.lagMax, LagAtEnd: s.Lag, Active: int(s.Active)}
	one := s.Cycles == prev.Cycles+1 // else the gauges describe only the last of several
	if one {
		c.Duration = time.Duration((s.DurationSum - prev.DurationSum) * float64(time.Second))
	}
	// A cycle is measured only if it started with every group known and
	// announced: the one that announced them costs events, not calls.
	c.Warmup = prev.Cycles == 0 || f.prevEnd.IsZero() || !one || prev.GroupEvents < n || prev.Active < float64(n)
	if !f.prevEnd.IsZero() {
		w := window{From: f.prevEnd, To: s.At}
		c.APIGroups = len(inWindow(f.e.rec.snapshot(actionDescribe), w))
		c.APIRuns = len(inWindow(f.e.rec.snapshot(actionDescribeRuns), w))
	}
	if !c.Warmup {
		if f.measured == 0 {
			r.Measured.From = f.prevEnd
			f.cpuFrom, _ = procCPU(f.pid)
		}
		f.measured++
		r.Measured.To = s.At
	}
	r.Cycles = append(r.Cycles, c)
	r.Errors, r.Throttled = s.Errors, s.Throttled
	phase := ""
	if c.Warmup {
		phase = " (warm-up)"
	}
	f.e.h.logf("tracker: cycle %d: %d + %d calls, %d events, %v, lag max %.1f s%s", c.N, c.GroupCalls, c.RunsCalls,
		c.Events, c.Duration.Round(time.Millisecond), c.LagMax, phase)
	f.prev, f.prevEnd, f.lagMax = s, s.At, s.Lag
}

func inWindow(as []arrival, w window) []arrival {
	var out []arrival
	for _, a := range as {
		if w.contains(a.At) {
			out = append(out, a)
		}
	}
	return out
}

func trackerMarkdown(r trackerRun) string {
	cfg := r.Cfg
	want := int(math.Ceil(float64(cfg.Groups) / 100))
	budget := cfg.Rate * cfg.Share
	var b strings.Builder
	fmt.Fprintf(&b, "## Run tracker at scale: `go run ./bench tracker`\n\n")
	kind := "singletons"
	if cfg.Batches > 0 {
		kind = fmt.Sprintf("%d of them table batches of %d rows, the rest singletons", cfg.Batches, cfg.Rows)
	}
	fmt.Fprintf(&b, "%d run groups (%s), all Running for %v in the sandbox (execution model on, limit lifted), submitted by a seeding worker "+
		"(`--rate 0 --tracker=false`: %d requests published in %v, submitted in %v). Then one worker with the tracker as deployed: "+
		"`--rate %g --tracker-share %g --tracker-interval %v --tracker-projects %s` (budget %g calls/s per action, fleet-wide limiters in NATS). "+
		"It knew every group %v and had announced each %v after it started. Calls per cycle are the tracker's gauge "+
		"`omicsq_tracker_cycle_describe_calls` and, in brackets, the sandbox's record between the harness's sightings of consecutive "+
		"cycle ends (sampled every 100 ms); lag is `omicsq_tracker_lag_seconds`.\n\n",
		cfg.Groups, kind, cfg.RunDuration, cfg.Groups, r.PublishTime.Round(time.Millisecond), r.SeedTime.Round(time.Millisecond),
		cfg.Rate, cfg.Share, cfg.Interval, trackerProject, budget, r.Learned.Round(100*time.Millisecond), r.Announced.Round(100*time.Millisecond))
	b.WriteString("| cycle | phase | DescribeRunGroups (at the API) | DescribeRuns (at the API) | events | duration | lag max · at end | active |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range r.Cycles {
		phase := "measured"
		if c.Warmup {
			phase = "warm-up"
		}
		fmt.Fprintf(&b, "| %d | %s | %d (%d) | %d (%d) | %d | %.1f s | %.1f s · %.1f s | %d |\n", c.N, phase, c.GroupCalls, c.APIGroups,
			c.RunsCalls, c.APIRuns, c.Events, c.Duration.Seconds(), c.LagMax, c.LagAtEnd, c.Active)
	}
	var calls, runs, n int
	var lag float64
	var dur time.Duration
	for _, c := range r.Cycles {
		if !c.Warmup {
			calls, runs, n, dur, lag = calls+c.GroupCalls, runs+c.RunsCalls, n+1, dur+c.Duration, max(lag, c.LagMax)
		}
	}
	secs := r.Measured.seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(r.APICalls) / secs
	}
	fmt.Fprintf(&b, "\n| | measured cycles |\n|---|---|\n")
	fmt.Fprintf(&b, "| cycles | %d |\n", n)
	fmt.Fprintf(&b, "| Describe calls per cycle (tracker) | %.1f DescribeRunGroups + %.1f DescribeRuns; ceil(%d/100) = %d: %s |\n",
		float64(calls)/float64(max(n, 1)), float64(runs)/float64(max(n, 1)), cfg.Groups, want, yesNo(calls == want*n))
	fmt.Fprintf(&b, "| calls at the API in the measured window | %d DescribeRunGroups, %d DescribeRuns (tracker: %d · %d) |\n", r.APICalls, r.RunsCalls, calls, runs)
	fmt.Fprintf(&b, "| cycle duration, mean | %.1f s (%d calls at %g/s ≈ %.1f s) |\n", dur.Seconds()/float64(max(n, 1)), want, budget, float64(want)/math.Max(budget, 1e-9))
	within := budget == 0 || (rate <= budget*1.02 && float64(r.APIMax1s) <= math.Ceil(budget)+1)
	fmt.Fprintf(&b, "| DescribeRunGroups calls/s at the API | %.2f over %.1f s; at most %d in any second (%d over the whole run); budget %g/s: %s |\n",
		rate, secs, r.APIMax1s, r.SandboxMax1s, budget, yesNo(within))
	fmt.Fprintf(&b, "| tracker lag, max | %.1f s |\n", lag)
	fmt.Fprintf(&b, "| tracker errors · throttled calls | %.0f · %.0f |\n", r.Errors, r.Throttled)
	fmt.Fprintf(&b, "| tracker worker CPU · RSS | %v over the measured cycles (%.3f cores) · %.1f MiB (peak %.1f MiB) |\n",
		r.CPU.Round(time.Millisecond), r.CPU.Seconds()/math.Max(secs, 1e-9), mib(r.RSS.RSS), mib(r.RSS.HWM))
	fmt.Fprintf(&b, "| load avg before → after | %s → %s |\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "| log check | %s |\n\n", r.Check)
	return b.String()
}
