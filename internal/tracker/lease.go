package tracker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// errLeaseLost ends a leadership: the lease was taken over, deleted, or
// could not be renewed in time.
var errLeaseLost = errors.New("tracker: leadership lease lost")

// lease is the tracker's leadership: one KV key, created when absent and
// renewed by compare-and-set every ttl/3. A follower takes it over only
// after seeing the same revision for a whole ttl on its own clock, so
// neither clock skew between replicas nor the holder's wall clock matters.
// The holder stands down once it has gone 2/3 ttl without a successful
// renewal, before any follower can have taken over.
type lease struct {
	kv     jetstream.KeyValue
	key    string
	ttl    time.Duration
	holder string
	worker string
	log    *slog.Logger

	rev       uint64
	renewedAt time.Time // monotonic, this process
}

// leaseValue is the key's content: who holds it. Followers only compare
// revisions; the text is for operators (nats kv get).
type leaseValue struct {
	Holder    string    `json:"holder"`
	Worker    string    `json:"worker"`
	RenewedAt time.Time `json:"renewed_at"`
	TTL       string    `json:"ttl"`
}

func newLease(kv jetstream.KeyValue, key, worker string, ttl time.Duration, log *slog.Logger) *lease {
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	// The nonce tells two incarnations of one worker (a restarted pod keeps
	// its name) apart.
	return &lease{kv: kv, key: key, ttl: ttl, worker: worker, holder: worker + "/" + hex.EncodeToString(nonce[:]), log: log}
}

func (l *lease) value() []byte {
	b, _ := json.Marshal(leaseValue{Holder: l.holder, Worker: l.worker, RenewedAt: time.Now().UTC(), TTL: l.ttl.String()})
	return b
}

// acquire blocks until this process holds the lease, or ctx ends.
func (l *lease) acquire(ctx context.Context) error {
	var (
		seenRev   uint64
		seenSince time.Time
	)
	for {
		e, err := l.kv.Get(ctx, l.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if rev, err := l.kv.Create(ctx, l.key, l.value()); err == nil {
				l.took(rev)
				return nil
			}
		case err != nil:
			if ctx.Err() == nil {
				l.log.Warn("could not read the tracker lease", "error", err)
			}
		case e.Revision() != seenRev:
			seenRev, seenSince = e.Revision(), time.Now()
		case time.Since(seenSince) >= l.ttl:
			// Unchanged for a whole ttl: its holder is gone.
			if rev, err := l.kv.Update(ctx, l.key, l.value(), seenRev); err == nil {
				l.took(rev)
				return nil
			}
		}
		if err := sleep(ctx, l.ttl/3); err != nil {
			return err
		}
	}
}

func (l *lease) took(rev uint64) {
	l.rev, l.renewedAt = rev, time.Now()
}

// hold renews the lease until ctx ends (nil) or the lease is lost
// (errLeaseLost).
func (l *lease) hold(ctx context.Context) error {
	every := l.ttl / 3
	for {
		wait := every
		if time.Since(l.renewedAt) < every {
			wait = every - time.Since(l.renewedAt)
		}
		if err := sleep(ctx, wait); err != nil {
			return nil
		}
		rev, err := l.kv.Update(ctx, l.key, l.value(), l.rev)
		switch {
		case err == nil:
			l.took(rev)
			every = l.ttl / 3
		case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch),
			errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			return fmt.Errorf("%w: taken over", errLeaseLost)
		case ctx.Err() != nil:
			return nil
		default:
			l.log.Warn("could not renew the tracker lease", "error", err)
			if time.Since(l.renewedAt) >= 2*l.ttl/3 {
				return fmt.Errorf("%w: not renewed for %v", errLeaseLost, time.Since(l.renewedAt).Round(time.Millisecond))
			}
			every = l.ttl / 6 // try harder while time is left
		}
	}
}

// release deletes the lease (if still ours) so that a follower takes over
// at once instead of after a ttl: the graceful hand-over of a rolling
// restart.
func (l *lease) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		l.log.Debug("could not release the tracker lease", "error", err)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
