package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/omicsq/omicsq/sandbox"
)

type killConfig struct {
	Workers     int
	Before      time.Duration // from the first call to the SIGKILL
	After       time.Duration // from the SIGKILL to the end
	Warmup      time.Duration
	Concurrency int
}

func (c *killConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Workers, "workers", 3, "worker processes (global limiter)")
	fs.DurationVar(&c.Before, "before", 20*time.Second, "time from the first call to the SIGKILL of one worker")
	fs.DurationVar(&c.After, "after", 40*time.Second, "time the run goes on after the SIGKILL")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "warm-up excluded from the steady-state maximum")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "worker --concurrency")
}

type killResult struct {
	cfg                   killConfig
	Victim                string
	Kill                  time.Time
	Pre, Post10, Rest     tally
	Sandbox               sandbox.ActionStats
	MaxArrSteady          int
	Stalls                stallStats
	Series                []int // admitted per second, aligned to the kill, from -10 s
	SeriesFirst           int
	Recovery              string
	Gap                   time.Duration // longest gap between admitted calls around the kill
	GapAt                 time.Duration // when that gap started, relative to the kill
	PreGap                time.Duration // longest gap in the 10 s before the kill, for scale
	Results, DeadLetters  uint64
	CPU                   cpuUsage
	LoadBefore, LoadAfter string
	Check                 string
}

const recoveryWindow = 5 // seconds averaged to decide the rate is back

func runKill(ctx context.Context, h *harness, cfg killConfig) (string, error) {
	r := killResult{cfg: cfg}
	h.logf("kill: %d workers; SIGKILL one %v after the first call; %v more", cfg.Workers, cfg.Before, cfg.After)
	e, err := h.newEnv(ctx, "kill", envOptions{SandboxRate: apiLimit, Record: true})
	if err != nil {
		return "", err
	}
	defer e.close()
	total := cfg.Before + cfg.After + 20*time.Second
	if err := e.preload(ctx, "kill", int(25*total.Seconds())); err != nil {
		return "", err
	}
	r.LoadBefore = loadAvg()
	meter := newCPUMeter()
	probe := startStallProbe()
	defer probe.close()
	if err := startFleet(e, meter, cfg.Workers, "--rate", "20", "--rate-limit-scope", "global", "--concurrency", fmt.Sprint(cfg.Concurrency)); err != nil {
		return "", err
	}
	t0, err := e.waitFirstArrival(ctx, actionRun, time.Minute)
	if err != nil {
		return "", err
	}
	if err := sleepUntil(ctx, t0.Add(cfg.Before)); err != nil {
		return "", err
	}
	if err := e.checkWorkers(); err != nil {
		return "", err
	}
	victim := e.workers[0]
	r.Victim = victim.name
	meter.sample(victim.pid())
	r.Kill = time.Now()
	victim.kill()
	h.logf("kill: SIGKILLed %s (pid %d)", victim.name, victim.pid())
	end := r.Kill.Add(cfg.After)
	if err := sleepUntil(ctx, end.Add(500*time.Millisecond)); err != nil {
		return "", err
	}
	if err := e.checkWorkers(victim); err != nil {
		return "", err
	}
	r.CPU = meter.read()
	r.LoadAfter = loadAvg()
	e.stopWorkers()

	st, as, check := e.settle(actionRun)
	r.Sandbox, r.Check = st, check
	k := r.Kill
	r.Pre = count(as, window{k.Add(-10 * time.Second), k})
	r.Post10 = count(as, window{k, k.Add(10 * time.Second)})
	r.Rest = count(as, window{k.Add(10 * time.Second), end})
	steady := window{t0.Add(cfg.Warmup), end}
	r.MaxArrSteady = maxSliding(as, steady, all)
	r.Stalls = probe.stats(steady)
	r.Series, _, r.SeriesFirst = perSecond(as, k, window{k.Add(-10 * time.Second), end})
	r.Recovery = recoveryAfter(r.Series, -r.SeriesFirst)
	r.Gap, r.GapAt = longestGap(as, window{k.Add(-time.Second), k.Add(10 * time.Second)}, k)
	r.PreGap, _ = longestGap(as, window{k.Add(-10 * time.Second), k}, k)
	r.Results, _ = streamMsgs(ctx, e.js, e.topo.ResultsStream)
	r.DeadLetters, _ = streamMsgs(ctx, e.js, e.topo.DLQStream)
	h.logf("kill: before %.2f/s, 10 s after %.2f/s, then %.2f/s; max window %d; recovery %s",
		r.Pre.Rate(), r.Post10.Rate(), r.Rest.Rate(), st.MaxArrivals1s, r.Recovery)
	return r.markdown(), nil
}

// recoveryAfter returns the first second k >= 0 after the kill (series[k0]
// is the second starting at the kill) from which the mean of the next
// recoveryWindow per-second counts is >= targetRate.
func recoveryAfter(series []int, k0 int) string {
	for k := k0; k+recoveryWindow <= len(series); k++ {
		sum := 0
		for _, v := range series[k : k+recoveryWindow] {
			sum += v
		}
		if float64(sum)/recoveryWindow >= targetRate {
			return fmt.Sprintf("%d s", k-k0)
		}
	}
	return "not within the run"
}

// longestGap returns the longest time between consecutive admitted calls in
// w, and when it began relative to ref.
func longestGap(as []arrival, w window, ref time.Time) (gap, at time.Duration) {
	var prev time.Time
	for _, a := range as {
		if !w.contains(a.At) || !a.Admitted() {
			continue
		}
		if !prev.IsZero() && a.At.Sub(prev) > gap {
			gap, at = a.At.Sub(prev), prev.Sub(ref)
		}
		prev = a.At
	}
	return gap, at
}

func (r killResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Losing a replica: `go run ./bench kill`\n\n")
	fmt.Fprintf(&b, "%d workers (`--rate 20 --rate-limit-scope global`), sandbox limit %d/s; %s is SIGKILLed %v after the first call, "+
		"the run goes on %v. Its reservations (up to the limiter's 1 s horizon) stay in the shared log; its in-flight messages "+
		"come back only after AckWait (60 s), outside this run.\n\n", r.cfg.Workers, apiLimit, r.Victim, r.cfg.Before, r.cfg.After)
	b.WriteString("| interval | calls/s | throttled |\n|---|---:|---:|\n")
	for _, row := range []struct {
		name string
		t    tally
	}{{"10 s before the kill", r.Pre}, {"first 10 s after the kill", r.Post10}, {fmt.Sprintf("from 10 s to %v after the kill", r.cfg.After), r.Rest}} {
		fmt.Fprintf(&b, "| %s | %.2f | %d (%.2f%%) |\n", row.name, row.t.Rate(), row.t.Throttled, row.t.ThrottledPct())
	}
	meets := r.Sandbox.MaxArrivals1s <= apiLimit && strings.HasSuffix(r.Recovery, " s") && atoiPrefix(r.Recovery) <= 10
	fmt.Fprintf(&b, "\n| figure | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| max arrivals in a sliding 1 s, whole run (sandbox) | %d |\n", r.Sandbox.MaxArrivals1s)
	fmt.Fprintf(&b, "| max arrivals in a sliding 1 s, from %v after the first call to the end | %d |\n", r.cfg.Warmup, r.MaxArrSteady)
	fmt.Fprintf(&b, "| time until the rate is back to ≥ %.1f/s (first second after the kill from which the %d-second mean of the per-second counts is ≥ %.1f) | %s |\n",
		targetRate, recoveryWindow, targetRate, r.Recovery)
	fmt.Fprintf(&b, "| longest gap between admitted calls, 1 s before to 10 s after the kill (starting at) · in the 10 s before | %v (%+v) · %v |\n",
		r.Gap.Round(time.Millisecond), r.GapAt.Round(time.Millisecond), r.PreGap.Round(time.Millisecond))
	fmt.Fprintf(&b, "| throttled, whole run | %d |\n", r.Sandbox.Throttled)
	fmt.Fprintf(&b, "| results · dead letters (whole run) | %d · %d |\n", r.Results, r.DeadLetters)
	fmt.Fprintf(&b, "| CPU cores: workers · harness · others | %.2f · %.2f · %.2f |\n", r.CPU.Cores(r.CPU.Workers), r.CPU.Cores(r.CPU.Harness), r.CPU.Cores(r.CPU.Others()))
	fmt.Fprintf(&b, "| harness wake-up delay p99 · max · count > 20 ms | %s |\n", r.Stalls)
	fmt.Fprintf(&b, "| load average before → after | %s → %s |\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "| raw log check | %s |\n", r.Check)
	fmt.Fprintf(&b, "| targets (no window > 20, full rate within 10 s) | %s |\n", yesNo(meets))
	b.WriteString("\nAdmitted calls per second around the kill (second 0 starts at the SIGKILL):\n\n```\n")
	for i, v := range r.Series {
		fmt.Fprintf(&b, "%+4d s %3d %s\n", r.SeriesFirst+i, v, strings.Repeat("#", v))
		if r.SeriesFirst+i >= 15 {
			break
		}
	}
	b.WriteString("```\n\n")
	return b.String()
}

func atoiPrefix(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
