package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Quota is what the shared state of one quota key says, for an operator's
// view (the console): no limiter needs to run to read it.
type Quota struct {
	// Region and Action are the readable parts of the key (the account is
	// stored only hashed).
	Region, Action string
	// Limit calls per Window, as the replica that last wrote the key has it.
	Limit  int
	Window time.Duration
	// Configured is Limit/Window and Effective the adaptive rate now, both
	// calls/s; Effective is below Configured after throttling.
	Configured, Effective float64
	// LastDecrease is when throttling last lowered the rate (zero: never,
	// or recovered).
	LastDecrease time.Time
	// Granted counts the grants of the last Window.
	Granted int
}

// Inspect reads every quota key of bucket. A missing bucket is no quota.
func Inspect(ctx context.Context, js jetstream.JetStream, bucket string, now time.Time) ([]Quota, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ratelimit: bucket %s: %w", bucket, err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: list %s: %w", bucket, err)
	}
	defer func() { _ = lister.Stop() }()
	var quotas []Quota
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue // deleted since it was listed
		}
		st, err := decodeState(e.Value())
		if err != nil || st.writerLimit <= 0 || st.writerSpan <= 0 {
			continue
		}
		quotas = append(quotas, quotaOf(key, st, now))
	}
	return quotas, nil
}

func quotaOf(key string, st state, now time.Time) Quota {
	// The writer's span is Window+Guard; the guard is not stored, so the
	// window is shown as the span less the default guard when it fits.
	span := time.Duration(st.writerSpan)
	window := span
	if span > DefaultGuard {
		window = span - DefaultGuard
	}
	p := params{limit: st.writerLimit, span: st.writerSpan, maxRate: float64(st.writerLimit) / window.Seconds(), minRate: DefaultMinRate}
	q := Quota{Limit: st.writerLimit, Window: window, Configured: p.maxRate, Effective: st.effectiveRate(now.UnixNano(), p)}
	if parts := strings.SplitN(key, ".", 3); len(parts) == 3 {
		q.Region, q.Action = parts[0], parts[1]
	}
	if st.decreasedAt != 0 && q.Effective < q.Configured {
		q.LastDecrease = time.Unix(0, st.decreasedAt).UTC()
	}
	for _, g := range st.grants {
		if g > now.UnixNano()-int64(window) && g <= now.UnixNano() {
			q.Granted++
		}
	}
	return q
}
