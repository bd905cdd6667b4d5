package worker

import (
	"context"
	"regexp"
	"strings"
	"time"

	"github.com/omicsq/omicsq/internal/rerun"
	"github.com/omicsq/omicsq/internal/submit"
)

// checkAutoRetry checks the auto-retry policy's settings.
func (c *config) checkAutoRetry(p *problems) {
	if c.Topology.Tracker && strings.TrimSpace(c.Topology.RetriesBucket) == "" {
		p.bad("retries-bucket", "must not be empty while --tracker is on")
	}
	switch {
	case c.AutoRetry < 0:
		p.bad("auto-retry", "must be >= 0 (0: off), got %d", c.AutoRetry)
	case c.AutoRetry == 0:
		return
	case !c.Topology.Tracker:
		p.bad("auto-retry", "needs --tracker: the policy reads the tracker's lifecycle events")
	}
	if strings.TrimSpace(c.AutoRetryMessages) == "" {
		p.bad("auto-retry-messages", "must be set when --auto-retry is on: which failures to retry")
	} else if _, err := regexp.Compile(c.AutoRetryMessages); err != nil {
		p.bad("auto-retry-messages", "must be a Go regular expression: %v", err)
	}
}

// buildAutoRetry makes the auto-retry policy when it is on: its RetryRuns
// limiter (fleet-wide, like every action's), the shared DescribeRunGroups
// one for its lookups, and the lookup horizon the submissions use.
func (p *process) buildAutoRetry(ctx context.Context, down *shutdown, api *submit.Client, account string, describeLimiter limiter) error {
	cfg := p.cfg
	if cfg.AutoRetry == 0 {
		return nil
	}
	retryLimiter, err := newLimiter(ctx, p.js, cfg, account, "RetryRuns", p.log)
	if err != nil {
		return err
	}
	down.push(func() { _ = retryLimiter.Close() })
	rc := rerun.Config{JS: p.js, Topology: cfg.Topology, API: api, RetryLimiter: retryLimiter,
		DescribeLimiter: describeLimiter, Horizon: cfg.LookupHorizon, LeaseTTL: max(rerun.DefaultLeaseTTL, 2*cfg.APITimeout+time.Minute),
		Holder: cfg.WorkerID, Log: p.log}
	if p.batches != nil {
		rc.BatchCancelled = p.batches.Cancelled
	}
	r, err := rerun.New(ctx, rc)
	if err != nil {
		return err
	}
	p.auto = &rerun.Auto{JS: p.js, Topology: cfg.Topology, Retrier: r, Max: cfg.AutoRetry,
		Match: regexp.MustCompile(cfg.AutoRetryMessages), Provision: cfg.Provision, By: cfg.WorkerID, Log: p.log,
		OnOutcome: func(o rerun.Outcome) { p.m.AutoRetry(string(o.Kind)) }}
	return nil
}
