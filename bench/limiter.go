package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omicsq/omicsq/sandbox"
)

const (
	actionRun = "RunApplication"
	// apiLimit is the documented quota the sandbox enforces and the
	// workers are configured for.
	apiLimit = sandbox.DefaultRate
	// Acceptance figures of the limiter (the targets).
	targetRate         = 19.5
	targetThrottledPct = 0.1
)

type limiterConfig struct {
	Duration    time.Duration // steady state measured per run
	Warmup      time.Duration
	Workers     []int
	Baseline    bool
	Concurrency int
}

func (c *limiterConfig) flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "steady state measured per run (after the warm-up)")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "warm-up excluded from the steady state, from the first call")
	fs.Func("workers", "comma-separated numbers of worker processes (default 1,3,6)", func(s string) error {
		n, err := parseInts(s)
		c.Workers = n
		return err
	})
	fs.BoolVar(&c.Baseline, "baseline", true, "also run the naive per-process limiter (--rate-limit-scope local) side by side")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "worker --concurrency")
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("want positive integers separated by commas, got %q", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// limiterRun is one (scope, N) run.
type limiterRun struct {
	Scope  string
	N      int
	Steady tally
	Window window
	MaxArr int // most arrivals in a sliding 1 s, steady state (raw log)
	// Series is the admitted calls in each second of the steady state.
	Series []int
	// Stalls is how late the harness's goroutines woke (CPU starvation).
	Stalls                stallStats
	PerSecLo, PerSecHi    int
	GapMin, GapP1, GapMed time.Duration       // between admitted calls, steady state
	Sandbox               sandbox.ActionStats // whole run, the sandbox's own figures
	// Results and DeadLetters are the requests settled during the whole run.
	Results, DeadLetters  uint64
	Decreases             float64 // limiter rate decreases (AIMD), all workers
	Retries               float64 // retries scheduled after throttling, all workers
	OtherOutcomes         map[string]int
	CPU                   cpuUsage
	LoadBefore, LoadAfter string
	Check                 string // cross-check of the raw log against the sandbox
}

func (r limiterRun) ok() bool {
	return r.Steady.Rate() >= targetRate && r.Steady.ThrottledPct() <= targetThrottledPct && r.Sandbox.MaxArrivals1s <= apiLimit
}

func runLimiter(ctx context.Context, h *harness, cfg limiterConfig) (string, error) {
	if len(cfg.Workers) == 0 {
		cfg.Workers = []int{1, 3, 6}
	}
	scopes := []string{"global"}
	if cfg.Baseline {
		scopes = append(scopes, "local")
	}
	var runs []limiterRun
	for _, n := range cfg.Workers {
		for _, scope := range scopes {
			r, err := limiterOnce(ctx, h, cfg, scope, n)
			if err != nil {
				return "", fmt.Errorf("limiter %s N=%d: %w", scope, n, err)
			}
			h.logf("limiter %s N=%d: %.2f calls/s, throttled %d (%.2f%%), max window steady %d, whole run %d",
				scope, n, r.Steady.Rate(), r.Steady.Throttled, r.Steady.ThrottledPct(), r.MaxArr, r.Sandbox.MaxArrivals1s)
			runs = append(runs, r)
		}
	}
	return limiterMarkdown(cfg, runs), nil
}

func limiterOnce(ctx context.Context, h *harness, cfg limiterConfig, scope string, n int) (limiterRun, error) {
	r := limiterRun{Scope: scope, N: n}
	h.logf("limiter: scope=%s N=%d: %v warm-up + %v steady state", scope, n, cfg.Warmup, cfg.Duration)
	e, err := h.newEnv(ctx, fmt.Sprintf("limiter-%s-%d", scope, n), envOptions{SandboxRate: apiLimit, Record: true})
	if err != nil {
		return r, err
	}
	defer e.close()
	// Enough requests that the fleet never runs dry: the sandbox admits at
	// most 20/s, and each request needs one admitted call.
	total := cfg.Warmup + cfg.Duration + 20*time.Second
	if err := e.preload(ctx, fmt.Sprintf("lim-%s-%d", scope, n), int(25*total.Seconds())); err != nil {
		return r, err
	}
	r.LoadBefore = loadAvg()
	meter := newCPUMeter()
	probe := startStallProbe()
	defer probe.close()
	if err := startFleet(e, meter, n, "--rate", "20", "--rate-limit-scope", scope, "--concurrency", strconv.Itoa(cfg.Concurrency)); err != nil {
		return r, err
	}
	t0, err := e.waitFirstArrival(ctx, actionRun, time.Minute)
	if err != nil {
		return r, err
	}
	r.Window = window{From: t0.Add(cfg.Warmup), To: t0.Add(cfg.Warmup + cfg.Duration)}
	if err := sleepUntil(ctx, r.Window.To.Add(500*time.Millisecond)); err != nil {
		return r, err
	}
	if err := e.checkWorkers(); err != nil {
		return r, err
	}
	r.Decreases, r.Retries = fleetMetrics(e.workers)
	r.CPU = meter.read()
	r.LoadAfter = loadAvg()
	r.Stalls = probe.stats(r.Window)
	e.stopWorkers()

	st, as, check := e.settle(actionRun)
	r.Check = check
	r.Sandbox = st
	r.Steady = count(as, r.Window)
	r.MaxArr = maxSliding(as, r.Window, all)
	r.Series, _, _ = perSecond(as, r.Window.From, r.Window)
	r.PerSecLo, r.PerSecHi = minMax(r.Series)
	r.OtherOutcomes = otherOutcomes(as)
	r.GapMin, r.GapP1, r.GapMed = gaps(as, r.Window)
	r.Results, _ = streamMsgs(ctx, e.js, e.topo.ResultsStream)
	r.DeadLetters, _ = streamMsgs(ctx, e.js, e.topo.DLQStream)
	return r, nil
}

// startFleet starts n workers w1..wn at once and tracks their CPU.
func startFleet(e *env, meter *cpuMeter, n int, extra ...string) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	procs := make([]*proc, n)
	for i := range n {
		wg.Go(func() {
			p, err := e.h.start(fmt.Sprintf("w%d", i+1), e.dir, e.workerArgs(fmt.Sprintf("w%d", i+1), extra...), sandboxCredentials)
			procs[i], errs[i] = p, err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			return errs[i]
		}
		e.workers = append(e.workers, procs[i])
		meter.track(procs[i].pid())
	}
	return nil
}

// stopWorkers stops every worker (SIGTERM, brief drain).
func (e *env) stopWorkers() {
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() { w.stop(15 * time.Second) })
	}
	wg.Wait()
}

// settle returns, once traffic has stopped, the sandbox's statistics of
// action and the raw log, and compares the two.
func (e *env) settle(action string) (sandbox.ActionStats, []arrival, string) {
	// A call answered after the last snapshot would be missing from one of
	// them: wait for quiet.
	var st sandbox.ActionStats
	for range 50 {
		st = e.sb.Stats().Actions[action]
		time.Sleep(100 * time.Millisecond)
		if e.sb.Stats().Actions[action].Arrivals == st.Arrivals {
			break
		}
	}
	as := e.rec.snapshot(action)
	adm, thr := 0, 0
	for _, a := range as {
		if a.Admitted() {
			adm++
		}
		if a.Throttled() {
			thr++
		}
	}
	whole := window{From: time.Unix(0, 0), To: time.Now().Add(time.Hour)}
	recMax := maxSliding(as, whole, all)
	var problems []string
	if int64(len(as)) != st.Arrivals || int64(adm) != st.Admitted || int64(thr) != st.Throttled {
		problems = append(problems, fmt.Sprintf("log %d/%d/%d vs sandbox %d/%d/%d arrivals/admitted/throttled",
			len(as), adm, thr, st.Arrivals, st.Admitted, st.Throttled))
	}
	if recMax != st.MaxArrivals1s {
		problems = append(problems, fmt.Sprintf("log max window %d vs sandbox %d", recMax, st.MaxArrivals1s))
	}
	if len(problems) == 0 {
		return st, as, "ok"
	}
	return st, as, strings.Join(problems, "; ")
}

func otherOutcomes(as []arrival) map[string]int {
	m := map[string]int{}
	for _, a := range as {
		if a.Outcome != "success" && a.Outcome != "throttled" {
			m[a.Outcome]++
		}
	}
	return m
}

// fleetMetrics sums, over the running workers, the limiter's rate decreases
// and the retries scheduled after throttling.
func fleetMetrics(ws []*proc) (decreases, retries float64) {
	for _, w := range ws {
		if !w.running() {
			continue
		}
		m := workerMetrics(w.pid())
		decreases += m.sum("omicsq_ratelimiter_decreases_total")
		retries += m.sum("omicsq_retries_total", `reason="throttled"`)
	}
	return decreases, retries
}

func limiterMarkdown(cfg limiterConfig, runs []limiterRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Limiter accuracy: `go run ./bench limiter`\n\n")
	fmt.Fprintf(&b, "Sandbox limit %d calls per sliding second (RunApplication); every worker `--rate 20 --concurrency %d`, saturated "+
		"(a preloaded backlog). Steady state: %v from %v after the first call; warm-up and the shutdown tail are excluded. "+
		"Fresh NATS server and sandbox per run.\n\n", apiLimit, cfg.Concurrency, cfg.Duration, cfg.Warmup)

	byKey := map[string]limiterRun{}
	for _, r := range runs {
		byKey[fmt.Sprintf("%s/%d", r.Scope, r.N)] = r
	}
	workers := cfg.Workers
	b.WriteString("| workers | calls/s ours · naive | utilisation ours · naive | throttled ours · naive | max 1 s window, steady, ours · naive | max 1 s window, whole run, ours · naive | ours meets targets |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---|\n")
	for _, n := range workers {
		g, okG := byKey[fmt.Sprintf("global/%d", n)]
		l, okL := byKey[fmt.Sprintf("local/%d", n)]
		pair := func(f func(limiterRun) string) string {
			s := "—"
			if okG {
				s = f(g)
			}
			if okL {
				s += " · " + f(l)
			}
			return s
		}
		verdict := "—"
		if okG {
			verdict = "yes"
			if !g.ok() {
				verdict = "**no**: " + strings.Join(g.misses(), ", ")
			}
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s |\n", n,
			pair(func(r limiterRun) string { return fmt.Sprintf("%.2f", r.Steady.Rate()) }),
			pair(func(r limiterRun) string { return fmt.Sprintf("%.1f%%", 100*r.Steady.Rate()/apiLimit) }),
			pair(func(r limiterRun) string {
				return fmt.Sprintf("%d (%.2f%%)", r.Steady.Throttled, r.Steady.ThrottledPct())
			}),
			pair(func(r limiterRun) string { return strconv.Itoa(r.MaxArr) }),
			pair(func(r limiterRun) string { return strconv.Itoa(r.Sandbox.MaxArrivals1s) }),
			verdict)
	}
	b.WriteString("\nPer run:\n\n")
	b.WriteString("| scope | N | steady s | calls (arrivals) | admitted | throttled | admitted per second, min–max | gap between admitted calls, min · p1 · median | harness wake-up delay p99 · max · count > 20 ms | results · dead letters (whole run) | limiter decreases · throttle retries | CPU cores: workers · harness · others | load avg before → after | log check |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "| %s | %d | %.1f | %d | %d | %d | %d–%d | %s · %s · %s | %s | %d · %d | %.0f · %.0f | %.2f · %.2f · %.2f | %s → %s | %s |\n",
			r.Scope, r.N, r.Steady.Seconds, r.Steady.Arrivals, r.Steady.Admitted, r.Steady.Throttled, r.PerSecLo, r.PerSecHi,
			ms(r.GapMin), ms(r.GapP1), ms(r.GapMed), r.Stalls, r.Results, r.DeadLetters, r.Decreases, r.Retries,
			r.CPU.Cores(r.CPU.Workers), r.CPU.Cores(r.CPU.Harness), r.CPU.Cores(r.CPU.Others()),
			r.LoadBefore, r.LoadAfter, r.Check)
	}
	b.WriteString("\n<details><summary>Admitted calls in each second of the steady state</summary>\n\n```\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "%-6s N=%d: %s\n", r.Scope, r.N, joinInts(r.Series))
	}
	b.WriteString("```\n\n</details>\n")
	for _, r := range runs {
		if len(r.OtherOutcomes) > 0 {
			fmt.Fprintf(&b, "\nOther outcomes (%s, N=%d): %v\n", r.Scope, r.N, r.OtherOutcomes)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func (r limiterRun) misses() []string {
	var m []string
	if r.Steady.Rate() < targetRate {
		m = append(m, fmt.Sprintf("%.2f < %.1f calls/s", r.Steady.Rate(), targetRate))
	}
	if r.Steady.ThrottledPct() > targetThrottledPct {
		m = append(m, fmt.Sprintf("throttled %.2f%% > %.1f%%", r.Steady.ThrottledPct(), targetThrottledPct))
	}
	if r.Sandbox.MaxArrivals1s > apiLimit {
		m = append(m, fmt.Sprintf("window %d > %d", r.Sandbox.MaxArrivals1s, apiLimit))
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " ")
}
