package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/sandbox"
)

type outsideConfig struct {
	Workers     int
	Rate        float64 // outside client's calls per second
	Duration    time.Duration
	Alone       time.Duration // fleet alone before the outside client starts (after warm-up)
	Warmup      time.Duration
	Concurrency int
}

func (c *outsideConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Workers, "workers", 3, "worker processes (global limiter)")
	fs.Float64Var(&c.Rate, "rate", 10, "outside client's RunApplication calls per second, evenly spaced")
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "how long the outside client runs")
	fs.DurationVar(&c.Alone, "alone", 5*time.Second, "fleet alone (after the warm-up) before the outside client starts")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "warm-up from the first call")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "worker --concurrency")
}

// outsideCall is one call of the outside client.
type outsideCall struct {
	Sent      time.Time
	RequestID string
	Class     string // submit class, or "success"
}

type outsideResult struct {
	cfg                        outsideConfig
	Start                      time.Time
	Alone, First10, After      tally // fleet
	OutFirst10, OutAfter       tally // outside client, from the sandbox's log
	OutCalls                   int
	OutClasses                 map[string]int
	Unmatched                  int // outside calls without a request id (transport failure)
	FleetSeries                []int
	MaxArr                     int // sliding max of all arrivals after the outside client started
	Stalls                     stallStats
	Sandbox                    sandbox.ActionStats
	Decreases, Retries         float64
	Results, DeadLetters       uint64
	CPU                        cpuUsage
	LoadBefore, LoadAfter      string
	Check                      string
	FleetAfterLo, FleetAfterHi int
}

func runOutside(ctx context.Context, h *harness, cfg outsideConfig) (string, error) {
	r := outsideResult{cfg: cfg, OutClasses: map[string]int{}}
	h.logf("outside: %d workers + an outside client at %.0f calls/s for %v", cfg.Workers, cfg.Rate, cfg.Duration)
	e, err := h.newEnv(ctx, "outside", envOptions{SandboxRate: apiLimit, Record: true})
	if err != nil {
		return "", err
	}
	defer e.close()
	total := cfg.Warmup + cfg.Alone + cfg.Duration + 20*time.Second
	if err := e.preload(ctx, "fleet", int(25*total.Seconds())); err != nil {
		return "", err
	}
	client, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: e.sl.Addr(), InsecureHTTP: true, Timeout: 10 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
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
	r.Start = t0.Add(cfg.Warmup + cfg.Alone)
	if err := sleepUntil(ctx, r.Start); err != nil {
		return "", err
	}
	calls := outsideClient(ctx, client, r.Start, cfg.Rate, cfg.Duration)
	end := r.Start.Add(cfg.Duration)
	if err := sleepUntil(ctx, end.Add(500*time.Millisecond)); err != nil {
		return "", err
	}
	if err := e.checkWorkers(); err != nil {
		return "", err
	}
	r.Decreases, r.Retries = fleetMetrics(e.workers)
	r.CPU = meter.read()
	r.LoadAfter = loadAvg()
	e.stopWorkers()

	st, as, check := e.settle(actionRun)
	r.Sandbox, r.Check = st, check
	ours := map[string]bool{}
	for _, c := range calls {
		r.OutCalls++
		r.OutClasses[c.Class]++
		if c.RequestID == "" {
			r.Unmatched++
			continue
		}
		ours[c.RequestID] = true
	}
	var fleet, outside []arrival
	for _, a := range as {
		if ours[a.RequestID] {
			outside = append(outside, a)
		} else {
			fleet = append(fleet, a)
		}
	}
	if len(outside) != r.OutCalls-r.Unmatched {
		r.Check += fmt.Sprintf("; %d outside calls found in the log, %d sent with a request id", len(outside), r.OutCalls-r.Unmatched)
	}
	s := r.Start
	r.Alone = count(fleet, window{t0.Add(cfg.Warmup), s})
	r.First10 = count(fleet, window{s, s.Add(10 * time.Second)})
	r.After = count(fleet, window{s.Add(10 * time.Second), end})
	r.OutFirst10 = count(outside, window{s, s.Add(10 * time.Second)})
	r.OutAfter = count(outside, window{s.Add(10 * time.Second), end})
	r.MaxArr = maxSliding(as, window{s, end}, all)
	r.Stalls = probe.stats(window{t0, end})
	r.FleetSeries, _, _ = perSecond(fleet, s, window{s, end})
	lo, hi := minMax(r.FleetSeries[min(10, len(r.FleetSeries)):])
	r.FleetAfterLo, r.FleetAfterHi = lo, hi
	r.Results, _ = streamMsgs(ctx, e.js, e.topo.ResultsStream)
	r.DeadLetters, _ = streamMsgs(ctx, e.js, e.topo.DLQStream)
	h.logf("outside: fleet first 10 s %.2f/s (throttled %.2f%%), after %.2f/s (throttled %.2f%%); outside throttled %d of %d",
		r.First10.Rate(), r.First10.ThrottledPct(), r.After.Rate(), r.After.ThrottledPct(), r.OutFirst10.Throttled+r.OutAfter.Throttled, r.OutCalls)
	return r.markdown(), nil
}

// outsideClient calls RunApplication at rate per second, evenly spaced from
// start, for d, each call in its own goroutine so a slow answer does not
// shift the schedule. It returns every call once all have answered.
func outsideClient(ctx context.Context, client *submit.Client, start time.Time, rate float64, d time.Duration) []outsideCall {
	n := int(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	calls := make([]outsideCall, n)
	var wg sync.WaitGroup
	for i := range n {
		if sleepUntil(ctx, start.Add(time.Duration(i)*interval)) != nil {
			calls = calls[:i]
			break
		}
		wg.Go(func() {
			name := fmt.Sprintf("outside-%06d", i)
			c := outsideCall{Sent: time.Now()}
			resp, err := client.RunApplication(ctx, &submit.RunApplicationRequest{
				ApplicationId: "app-sweet-cerulean-frog-569111", Name: name, EnvironmentId: "env-05d0g0w2",
				InputBase64: new("e30K"),
			})
			switch {
			case err == nil:
				c.Class, c.RequestID = "success", resp.RequestId
			default:
				c.Class = "error"
				if apiErr, ok := errors.AsType[*submit.Error](err); ok {
					c.Class, c.RequestID = apiErr.Class.String(), apiErr.RequestID
				}
			}
			calls[i] = c
		})
	}
	wg.Wait()
	return calls
}

func (r outsideResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Sharing the quota with an outside client: `go run ./bench outside`\n\n")
	fmt.Fprintf(&b, "%d workers (`--rate 20 --rate-limit-scope global`) and, in the harness, an outside client calling RunApplication "+
		"on the same sandbox (limit %d/s) at %.0f calls/s, evenly spaced, for %v, starting %v after the first call. It does not "+
		"use the shared limiter and does not retry. Fleet and outside calls are told apart in the sandbox's log by RequestId.\n\n",
		r.cfg.Workers, apiLimit, r.cfg.Rate, r.cfg.Duration, r.cfg.Warmup+r.cfg.Alone)
	b.WriteString("| interval | fleet calls/s | fleet throttled | outside calls/s | outside throttled |\n|---|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| fleet alone (%v before the outside client) | %.2f | %d (%.2f%%) | — | — |\n", r.cfg.Alone, r.Alone.Rate(), r.Alone.Throttled, r.Alone.ThrottledPct())
	fmt.Fprintf(&b, "| first 10 s | %.2f | %d (%.2f%%) | %.2f | %d (%.2f%%) |\n", r.First10.Rate(), r.First10.Throttled, r.First10.ThrottledPct(),
		r.OutFirst10.Rate(), r.OutFirst10.Throttled, r.OutFirst10.ThrottledPct())
	fmt.Fprintf(&b, "| after the first 10 s (%v) | %.2f | %d (%.2f%%) | %.2f | %d (%.2f%%) |\n", r.cfg.Duration-10*time.Second,
		r.After.Rate(), r.After.Throttled, r.After.ThrottledPct(), r.OutAfter.Rate(), r.OutAfter.Throttled, r.OutAfter.ThrottledPct())
	meets := r.After.ThrottledPct() <= 2 && r.After.Rate() >= 0.85*(apiLimit-r.cfg.Rate)
	fmt.Fprintf(&b, "\n| figure | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| outside client: calls · by class | %d · %v |\n", r.OutCalls, r.OutClasses)
	fmt.Fprintf(&b, "| fleet admitted per second after the first 10 s, min–max | %d–%d |\n", r.FleetAfterLo, r.FleetAfterHi)
	fmt.Fprintf(&b, "| max arrivals (fleet + outside) in a sliding 1 s while the outside client ran | %d |\n", r.MaxArr)
	fmt.Fprintf(&b, "| limiter rate decreases · throttle retries (all workers, whole run) | %.0f · %.0f |\n", r.Decreases, r.Retries)
	fmt.Fprintf(&b, "| results · dead letters (whole run) | %d · %d |\n", r.Results, r.DeadLetters)
	fmt.Fprintf(&b, "| CPU cores: workers · harness · others | %.2f · %.2f · %.2f |\n", r.CPU.Cores(r.CPU.Workers), r.CPU.Cores(r.CPU.Harness), r.CPU.Cores(r.CPU.Others()))
	fmt.Fprintf(&b, "| harness wake-up delay p99 · max · count > 20 ms | %s |\n", r.Stalls)
	fmt.Fprintf(&b, "| load average before → after | %s → %s |\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "| raw log check | %s |\n", r.Check)
	fmt.Fprintf(&b, "| targets (fleet near %.0f/s, throttled ≤ 2%% after the first 10 s) | %s |\n", apiLimit-r.cfg.Rate, yesNo(meets))
	b.WriteString("\n<details><summary>Fleet admitted calls per second from the start of the outside client</summary>\n\n```\n")
	for i := 0; i < len(r.FleetSeries); i += 10 {
		row := r.FleetSeries[i:min(i+10, len(r.FleetSeries))]
		cells := make([]string, len(row))
		for j, v := range row {
			cells[j] = fmt.Sprintf("%2d", v)
		}
		fmt.Fprintf(&b, "%2d–%d s: %s\n", i, i+len(row)-1, strings.Join(cells, " "))
	}
	b.WriteString("```\n\n</details>\n\n")
	return b.String()
}
