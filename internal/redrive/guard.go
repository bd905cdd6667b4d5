package redrive

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

// Guard refuses to redrive, under a key that may already have created its
// run group, a request other than the one the key was first submitted with.
// The worker would refuse it at delivery (identity_changed); the guard gives
// the operator the answer at once and publishes nothing.
type Guard struct {
	l       *ledger.Ledger
	openErr error // the ledger bucket could not be bound
	bucket  string
	limits  submit.Limits
}

// OpenGuard binds the ledger bucket. A bucket that cannot be bound is not an
// error here: Check then refuses edited requests (fail closed) and lets
// unedited ones through unchecked (the worker checks them).
func OpenGuard(ctx context.Context, js jetstream.JetStream, bucket string, limits submit.Limits) *Guard {
	l, err := ledger.Open(ctx, js, bucket)
	return &Guard{l: l, openErr: err, bucket: bucket, limits: limits}
}

// OpenErr is why the ledger could not be bound (nil when it was).
func (g *Guard) OpenErr() error { return g.openErr }

// RefusalHead is how every identity refusal starts (tests and docs quote it).
const RefusalHead = "refused: a run group may already exist for this key's request as first submitted (ledger: maybe created); "

// Check says why body, the request as it would be republished for key, must
// not be redriven ("" when it may). edited is whether edits were applied.
// An edited request is refused when the ledger cannot be read (fail closed);
// an unedited one goes on, and unchecked says why it was not checked.
func (g *Guard) Check(ctx context.Context, key string, body []byte, edited bool) (refusal string, unchecked error) {
	req, err := submit.DecodeRunApplication(body, g.limits)
	if err != nil { // the caller has validated body: not expected
		return "refused: the request to redrive cannot be decoded to compare it with the ledger's record", nil
	}
	id := submission.IdentityOf(req, time.Now())
	lerr := g.openErr
	var entry ledger.Entry
	if lerr == nil {
		entry, _, lerr = g.l.Get(ctx, key)
	}
	if lerr != nil {
		if !edited {
			return "", lerr
		}
		return fmt.Sprintf("refused: the ledger (bucket %s) could not be read, so whether a run group may already exist "+
			"for this key cannot be checked (%v); an edited request is not redriven unchecked. Fix the ledger access "+
			"(--ledger-bucket, permissions) or redrive it without --set.", g.bucket, lerr), nil
	}
	if !entry.MaybeCreated || entry.Identity == nil || entry.Identity.Same(id) {
		return "", nil
	}
	what := entry.Identity.Differences(id)
	if edited {
		return RefusalHead + "an edited " + what + " would not be the same request and could create a second run group. " +
			"Redrive it without --set, which looks the run group up first.", nil
	}
	// The dead letter itself carries another request than the key's first
	// (an identity_changed dead letter): redriving it as is fails again.
	return RefusalHead + "this dead letter's " + what + " differs from it, so it is not the same request and could create " +
		"a second run group (the worker refuses it as identity_changed). Restore the first request with --set, or " +
		"submit this one under a new key.", nil
}
