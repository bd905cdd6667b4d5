// Package retry computes the delays between attempts of an operation that is
// safe to repeat (a throttled or never-sent API call), with exponential growth,
// jitter, and bounds on attempts and elapsed time.
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
	// MaxElapsed bounds the time from the first attempt to the last retry.
	// Default 15m.
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

// Schedule is the retry state of one request. It is not safe for concurrent use.
type Schedule struct {
	policy   Policy
	backoff  *backoff.ExponentialBackOff
	attempts int
	first    time.Time
	now      func() time.Time
}

// clockFunc adapts a func to backoff.Clock.
type clockFunc func() time.Time

func (c clockFunc) Now() time.Time { return c() }

// Resume returns the schedule of a request that has already made attempts
// attempts, the first of them at first (the zero time means "now"). Resuming
// from a persisted count keeps the bounds across redeliveries and restarts.
// now may be nil (time.Now).
func (p Policy) Resume(attempts int, first time.Time, now func() time.Time) *Schedule {
	if now == nil {
		now = time.Now
	}
	if first.IsZero() {
		first = now()
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: p.RandomizationFactor,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
		MaxElapsedTime:      0, // elapsed is bounded here, from the persisted first attempt
		Stop:                backoff.Stop,
		Clock:               clockFunc(now),
	}
	b.Reset()
	// Advance the interval to where a request with this many attempts stands.
	for i := 1; i < attempts; i++ {
		b.NextBackOff()
	}
	return &Schedule{policy: p, backoff: b, attempts: attempts, first: first, now: now}
}

// Attempts reports how many attempts the schedule has counted.
func (s *Schedule) Attempts() int { return s.attempts }

// Next counts one more failed attempt and returns the delay before the next
// one. ok is false when the request has used its attempts or its time.
func (s *Schedule) Next() (delay time.Duration, ok bool) {
	if s.attempts < 1 {
		s.attempts = 1
	}
	if s.attempts >= s.policy.MaxAttempts {
		return 0, false
	}
	d := s.backoff.NextBackOff()
	if d == backoff.Stop {
		return 0, false
	}
	if s.now().Add(d).Sub(s.first) > s.policy.MaxElapsed {
		return 0, false
	}
	s.attempts++
	return d, true
}

// Next returns the delay before the attempt after attempts failed ones,
// for a request that has already spent active of its MaxElapsed budget. ok
// is false when the budget (attempts or active time) is used up. Only active
// time counts: time a request spends paused or queued is not retrying.
func (p Policy) Next(attempts int, active time.Duration) (delay time.Duration, ok bool) {
	s := p.Resume(max(1, attempts), time.Time{}, nil)
	if s.attempts >= p.MaxAttempts {
		return 0, false
	}
	d := s.backoff.NextBackOff()
	if d == backoff.Stop || active+d > p.MaxElapsed {
		return 0, false
	}
	return d, true
}

// Delay returns the jittered delay before the attempt after attempts failed
// ones, with no budget: for failures the limiter adapts to (throttling),
// which are retried for as long as they last.
func (p Policy) Delay(attempts int) time.Duration {
	s := p.Resume(max(1, min(attempts, 64)), time.Time{}, nil)
	return s.backoff.NextBackOff()
}
