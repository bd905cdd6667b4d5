// Package retry computes the delays between attempts of an operation that is
// safe to repeat (a throttled or never-sent API call), with exponential growth,
// jitter, and bounds on attempts and on active retrying time (the delays
// spent, not time paused or queued).
//
// The arithmetic is github.com/cenkalti/backoff/v4's; this package pins its
// semantics behind a small type so a change of major version cannot silently
// change what "exhausted" means for the worker.
package retry

import (
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Policy bounds the retries of one request. The zero value is not useful; start
// from DefaultPolicy.
type Policy struct {
	// InitialInterval is the mean delay before the second attempt. Default 500ms.
	InitialInterval time.Duration
	// MaxInterval caps a single delay. Default 30s.
	MaxInterval time.Duration
	// Multiplier grows the delay after each attempt. Default 2.
	Multiplier float64
	// RandomizationFactor spreads each delay uniformly over
	// [d*(1-f), d*(1+f)] so that replicas do not retry in lock step. Default 0.5.
	RandomizationFactor float64
	// MaxAttempts is the total number of attempts (the first one included)
	// before the request is given up. Default 10.
	MaxAttempts int
	// MaxElapsed bounds the active retrying: the sum of the delays spent
	// (time paused or queued does not count). Default 15m.
	MaxElapsed time.Duration
}

// DefaultPolicy returns the policy the worker uses unless configured otherwise.
func DefaultPolicy() Policy {
	return Policy{
		InitialInterval:     500 * time.Millisecond,
		MaxInterval:         30 * time.Second,
		Multiplier:          2,
		RandomizationFactor: 0.5,
		MaxAttempts:         10,
		MaxElapsed:          15 * time.Minute,
	}
}

// Validate reports the first setting that is out of range, naming it.
func (p Policy) Validate() error {
	var errs []error
	if p.InitialInterval <= 0 {
		errs = append(errs, fmt.Errorf("retry initial interval must be > 0"))
	}
	if p.MaxInterval < p.InitialInterval {
		errs = append(errs, fmt.Errorf("retry max interval must be >= the initial interval"))
	}
	if p.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("retry multiplier must be >= 1"))
	}
	if p.RandomizationFactor < 0 || p.RandomizationFactor >= 1 {
		errs = append(errs, fmt.Errorf("retry randomization factor must be in [0, 1)"))
	}
	if p.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("retry max attempts must be >= 1"))
	}
	if p.MaxElapsed <= 0 {
		errs = append(errs, fmt.Errorf("retry max elapsed must be > 0"))
	}
	return errors.Join(errs...)
}

// backoffAfter returns the backoff state of a request that has failed
// attempts times: its next delay is the one before attempt attempts+1.
func (p Policy) backoffAfter(attempts int) *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: p.RandomizationFactor,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
		MaxElapsedTime:      0, // the budget is active time, counted by the caller
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	for i := 1; i < attempts; i++ {
		b.NextBackOff()
	}
	return b
}

// Next returns the delay before the attempt after attempts failed ones,
// for a request that has already spent active of its MaxElapsed budget. ok
// is false when the budget (attempts or active time) is used up. Only active
// time counts: time a request spends paused or queued is not retrying.
func (p Policy) Next(attempts int, active time.Duration) (delay time.Duration, ok bool) {
	attempts = max(1, attempts)
	if attempts >= p.MaxAttempts {
		return 0, false
	}
	d := p.backoffAfter(attempts).NextBackOff()
	if d == backoff.Stop || active+d > p.MaxElapsed {
		return 0, false
	}
	return d, true
}

// Delay returns the jittered delay before the attempt after attempts failed
// ones, with no budget: for failures the limiter adapts to (throttling),
// which are retried for as long as they last.
func (p Policy) Delay(attempts int) time.Duration {
	return p.backoffAfter(max(1, min(attempts, 64))).NextBackOff()
}
