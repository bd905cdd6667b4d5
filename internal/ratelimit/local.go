package ratelimit

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Local is a per-process token bucket (golang.org/x/time/rate) with the
// methods of Global. N processes each using a Local let N times its rate
// through, and it does not adapt to throttling: it is the single-process
// default and the baseline Global is measured against. Its methods are safe
// for concurrent use.
type Local struct {
	lim               *rate.Limiter
	rate              float64
	grants, throttles atomic.Uint64
	closed            chan struct{}
	closeOnce         sync.Once
}

// NewLocal returns a limiter allowing ratePerSecond calls per second with
// bursts of up to burst calls (values below 1 mean 1). It panics if
// ratePerSecond is not a positive finite number.
func NewLocal(ratePerSecond float64, burst int) *Local {
	if !(ratePerSecond > 0) || math.IsInf(ratePerSecond, 0) {
		panic("ratelimit: NewLocal rate must be a positive finite number")
	}
	return &Local{
		lim:    rate.NewLimiter(rate.Limit(ratePerSecond), max(burst, 1)),
		rate:   ratePerSecond,
		closed: make(chan struct{}),
	}
}

// Wait blocks until the caller may make one call, and returns how long it
// waited. If ctx ends first it returns ctx's error and gives the token back;
// after Close it returns ErrClosed.
func (l *Local) Wait(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if err := l.alive(ctx); err != nil {
		return 0, err
	}
	r := l.lim.Reserve() // always OK: n = 1 <= burst
	if err := l.sleep(ctx, r.Delay()); err != nil {
		r.Cancel()
		return time.Since(start), err
	}
	l.grants.Add(1)
	return time.Since(start), nil
}

// Ready blocks, without taking a token, until one will be available within
// horizon (tokens already reserved by waiting callers count).
func (l *Local) Ready(ctx context.Context, horizon time.Duration) error {
	for {
		if err := l.alive(ctx); err != nil {
			return err
		}
		missing := 1 - l.lim.Tokens()
		if missing <= 0 {
			return nil
		}
		until := time.Duration(missing / l.rate * float64(time.Second))
		if until <= horizon {
			return nil
		}
		if err := l.sleep(ctx, until-horizon); err != nil {
			return err
		}
	}
}

// Throttled only counts: Local does not adapt its rate.
func (l *Local) Throttled(context.Context) { l.throttles.Add(1) }

// Rates returns the configured rate twice: Local's rate never changes.
func (l *Local) Rates() (configured, effective float64) { return l.rate, l.rate }

// Stats returns the number of grants and of throttling reports.
func (l *Local) Stats() Stats {
	return Stats{Grants: l.grants.Load(), Throttles: l.throttles.Load()}
}

// Close makes Wait and Ready return ErrClosed.
func (l *Local) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *Local) alive(ctx context.Context) error {
	select {
	case <-l.closed:
		return ErrClosed
	default:
		return ctx.Err()
	}
}

func (l *Local) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.closed:
		return ErrClosed
	}
}
