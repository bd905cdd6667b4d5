// Package ratelimit keeps a whole fleet of omicsq workers within one API
// quota (Tencent Cloud: 20 calls/s per account and action) using NATS
// JetStream as the only shared infrastructure.
//
// Global is the fleet-wide limiter: a sliding log of the last Limit grant
// times, kept in one JetStream KV key per quota and advanced only by
// compare-and-set, so that no two replicas can hand out the same capacity.
// It fails closed (no grant without a successful write), paces grants evenly,
// and adapts the shared rate to throttling reported by the API (multiplicative
// decrease, cubic recovery). Local is the per-process limiter on
// golang.org/x/time/rate with the same methods, for single-process use and as
// a baseline.
//
// docs/ratelimit.md describes the algorithm, the bound it guarantees and the
// assumptions behind it.
package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"strings"
	"time"
)

// ErrClosed is returned by Wait and Ready after Close.
var ErrClosed = errors.New("ratelimit: limiter closed")

// Config sets the quota and the behaviour of a Global limiter. Zero fields take
// their defaults. Every replica that shares a key must use the same Limit,
// Window, Guard and Horizon: each replica enforces its own settings when it
// appends a grant, so the fleet is only as strict as its most permissive
// replica. A replica that reads a log written with other settings logs a
// warning.
type Config struct {
	// Limit is the number of calls allowed per Window. Default 20.
	Limit int
	// Window is the quota's window. Default 1s.
	Window time.Duration
	// Guard widens the window the limiter enforces to Window+Guard, absorbing
	// the spread between a grant and the call's arrival at the API (wake-up
	// latency, network jitter, clock skew between replicas). The sustained
	// rate is at most Limit/(Window+Guard). Default 20ms.
	Guard time.Duration
	// Burst is how many grants may be packed together; 1 spaces them evenly.
	// At most Limit. Default 1.
	Burst int
	// Horizon is how far ahead of its use a grant may be reserved. It bounds
	// the capacity a dead replica can hold. Default 1s.
	Horizon time.Duration
	// MinRate is the floor of the adaptive rate, in calls per second.
	// Default 1.
	MinRate float64
	// Decrease multiplies the shared rate when the API reports throttling.
	// In (0, 1). Default 0.85.
	Decrease float64
	// Holdoff is how long after a decrease further throttling reports are
	// taken as the same congestion event and ignored. Default 1s.
	Holdoff time.Duration
	// Recovery is how long the rate takes to climb back to where it was
	// before the last decrease; it then keeps rising, faster and faster, up
	// to Limit/Window. Default 15s.
	Recovery time.Duration
	// Bucket is the JetStream KV bucket holding the limiter state. Default
	// OMICSQ_RATELIMIT.
	Bucket string
	// Replicas of the KV bucket when this limiter creates it (1, 3 or 5).
	// Default 1.
	Replicas int
	// Logger receives decreases, recoveries, cold starts and warnings.
	// Default slog.Default().
	Logger *slog.Logger
	// Now is the wall clock; grant times are unix nanoseconds of it. Tests
	// replace it. Default time.Now.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultLimit    = 20
	DefaultWindow   = time.Second
	DefaultGuard    = 20 * time.Millisecond
	DefaultBurst    = 1
	DefaultHorizon  = time.Second
	DefaultMinRate  = 1.0
	DefaultDecrease = 0.85
	DefaultHoldoff  = time.Second
	DefaultRecovery = 15 * time.Second
	DefaultBucket   = "OMICSQ_RATELIMIT"
)

// withDefaults returns c with every zero field replaced by its default.
func (c Config) withDefaults() Config {
	if c.Limit == 0 {
		c.Limit = DefaultLimit
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Guard == 0 {
		c.Guard = DefaultGuard
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.Horizon == 0 {
		c.Horizon = DefaultHorizon
	}
	if c.MinRate == 0 {
		c.MinRate = DefaultMinRate
	}
	if c.Decrease == 0 {
		c.Decrease = DefaultDecrease
	}
	if c.Holdoff == 0 {
		c.Holdoff = DefaultHoldoff
	}
	if c.Recovery == 0 {
		c.Recovery = DefaultRecovery
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

var validBucket = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// validate reports every setting that is out of range; c has its defaults.
func (c Config) validate() error {
	var errs []error
	if c.Limit < 1 || c.Limit > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("limit %d must be in [1, %d]", c.Limit, math.MaxUint16))
	}
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("window %v must be > 0", c.Window))
	}
	// A grant is dropped if its caller wakes more than Guard/2 late, so a
	// guard below a couple of milliseconds (timer and scheduling latency)
	// would drop most of them.
	if c.Guard < 2*time.Millisecond {
		errs = append(errs, fmt.Errorf("guard %v must be >= 2ms", c.Guard))
	}
	if c.Burst < 1 || c.Burst > c.Limit {
		errs = append(errs, fmt.Errorf("burst %d must be in [1, limit]", c.Burst))
	}
	if c.Horizon <= 0 {
		errs = append(errs, fmt.Errorf("horizon %v must be > 0", c.Horizon))
	}
	maxRate := float64(c.Limit) / c.Window.Seconds()
	if !(c.MinRate > 0 && c.MinRate <= maxRate) {
		errs = append(errs, fmt.Errorf("min rate %v must be in (0, limit/window]", c.MinRate))
	}
	if !(c.Decrease > 0 && c.Decrease < 1) {
		errs = append(errs, fmt.Errorf("decrease %v must be in (0, 1)", c.Decrease))
	}
	if c.Holdoff < 0 {
		errs = append(errs, fmt.Errorf("holdoff %v must be >= 0", c.Holdoff))
	}
	if c.Recovery <= 0 {
		errs = append(errs, fmt.Errorf("recovery %v must be > 0", c.Recovery))
	}
	if !validBucket.MatchString(c.Bucket) {
		errs = append(errs, fmt.Errorf("bucket %q must match %s", c.Bucket, validBucket))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas %d must be in [1, 5]", c.Replicas))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ratelimit: invalid config: %w", err)
	}
	return nil
}

// params converts c (with defaults) into the units of the pure algorithm.
func (c Config) params() params {
	return params{
		limit:    c.Limit,
		span:     int64(c.Window + c.Guard),
		burst:    c.Burst,
		horizon:  int64(c.Horizon),
		maxRate:  float64(c.Limit) / c.Window.Seconds(),
		minRate:  c.MinRate,
		decrease: c.Decrease,
		holdoff:  int64(c.Holdoff),
		recovery: int64(c.Recovery),
	}
}

// Key names the quota of one action for one account in one region as a KV key.
// The quota is per main account, so pass the account ID (uin) when known; the
// account is only ever stored hashed, so a SecretId may be passed too (but
// then two keys of one account get separate budgets). Region and action are
// kept readable, reduced to KV-safe characters; the hash over all three keeps
// distinct quotas apart even when that reduction collides.
func Key(account, region, action string) string {
	// Length-prefixed, so that no two different triples hash the same input.
	sum := sha256.Sum256(fmt.Appendf(nil, "%d:%s%d:%s%d:%s", len(account), account, len(region), region, len(action), action))
	return keyToken(region) + "." + keyToken(action) + "." + hex.EncodeToString(sum[:16])
}

// keyToken keeps [A-Za-z0-9_-] of s (others become '_'), at most 32 bytes,
// never empty, so that it is one valid NATS subject token.
func keyToken(s string) string {
	if len(s) > 32 {
		s = s[:32]
	}
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

// validKey mirrors the KV key rule of nats.go, minus '/' and '=' which we never
// produce, and rejects empty tokens.
var validKey = regexp.MustCompile(`^[-_a-zA-Z0-9]+(\.[-_a-zA-Z0-9]+)*$`)

// Stats counts what one limiter instance did since it was created. Global
// fills every field; Local only Grants and Throttles.
type Stats struct {
	// Grants is the number of Wait calls that returned permission to call.
	Grants uint64
	// Conflicts is the number of compare-and-set writes that lost to
	// another writer and were retried.
	Conflicts uint64
	// Errors is the number of failed NATS operations (each retried with
	// backoff: the limiter fails closed).
	Errors uint64
	// Abandoned is the number of reserved slots left unused because the
	// caller's context ended (or Close was called) while waiting for them.
	Abandoned uint64
	// Late is the number of reserved slots given up because the caller
	// woke more than Guard/2 after the slot (a CPU-starved process): a call
	// that late could land among later grants. Each costs one slot of
	// capacity; a steady count means the process needs more CPU.
	Late uint64
	// Throttles is the number of Throttled calls.
	Throttles uint64
	// Decreases is the number of rate decreases this instance wrote.
	Decreases uint64
	// ColdStarts is the number of times this instance created the state
	// (key absent or unreadable) and so delayed the first grant.
	ColdStarts uint64
	// ClockOffset estimates local wall clock minus the NATS server's, from
	// the timestamps of watched KV updates (the smallest recent difference,
	// so it includes at least the delivery latency). Zero until measured.
	ClockOffset time.Duration
}
