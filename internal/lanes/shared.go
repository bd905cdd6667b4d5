package lanes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// opTimeout bounds one KV operation of a decision.
const opTimeout = time.Second

// maxConflicts bounds the compare-and-set attempts of one decision; past
// it the decision fails and the caller retries later.
const maxConflicts = 100

// Shared keeps the State in one KV key that every replica of the fleet
// reads and writes by compare-and-set, so that each token's flow is chosen
// once, globally: two replicas deciding at the same time cannot both act on
// the same State (one write loses and decides again on the new one).
type Shared struct {
	kv  jetstream.KeyValue
	key string
	cfg Config

	mu sync.Mutex
	// last is the State as of our last read or write, and rev its
	// revision: a single replica writes without reading first.
	last  State
	rev   uint64
	known bool

	conflicts uint64
}

// NewShared uses key in kv for the State. key must be a valid KV key (the
// rate limiter's key with a suffix keeps one State per quota).
func NewShared(kv jetstream.KeyValue, key string, cfg Config) (*Shared, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Shared{kv: kv, key: key, cfg: cfg}, nil
}

// Config returns the policy.
func (s *Shared) Config() Config { return s.cfg }

// Pick decides the flow of the fleet's next token (see Pick) and records it
// in the shared State before returning. ok is false when no flow has
// backlog.
func (s *Shared) Pick(ctx context.Context, backlog map[Flow]uint64) (f Flow, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	conflicts := 0
	for range maxConflicts {
		if !s.known {
			if err := s.read(ctx); err != nil {
				return Flow{}, false, err
			}
		}
		next := s.last.clone()
		f, ok = Pick(&next, backlog, s.cfg)
		if !ok {
			return Flow{}, false, nil
		}
		err := s.write(ctx, next)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			s.known = false // another replica decided: decide again on its State
			s.conflicts++
			if conflicts++; conflicts > 2 {
				// Replicas deciding in lockstep: spread them out a little.
				if err := sleepCtx(ctx, time.Duration(rand.Int64N(int64(2*time.Millisecond)))); err != nil {
					return Flow{}, false, err
				}
			}
			continue
		}
		if err != nil {
			s.known = false
			return Flow{}, false, err
		}
		return f, true, nil
	}
	return Flow{}, false, fmt.Errorf("lanes: %d conflicts in a row on the shared state", maxConflicts)
}

// Conflicts counts the decisions that had to be made again because another
// replica wrote first.
func (s *Shared) Conflicts() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conflicts
}

func (s *Shared) read(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	e, err := s.kv.Get(ctx, s.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		s.last, s.rev, s.known = State{}, 0, true
		return nil
	case err != nil:
		return fmt.Errorf("lanes: read state: %w", err)
	}
	var st State
	if e.Operation() == jetstream.KeyValuePut {
		// An unreadable State is replaced: it only steers fairness, and a
		// fresh one starts everyone at the same virtual time.
		_ = json.Unmarshal(e.Value(), &st)
	}
	s.last, s.rev, s.known = st, e.Revision(), true
	return nil
}

func (s *Shared) write(ctx context.Context, next State) error {
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var rev uint64
	if s.rev == 0 {
		rev, err = s.kv.Create(ctx, s.key, b)
	} else {
		rev, err = s.kv.Update(ctx, s.key, b, s.rev)
	}
	if err != nil {
		return err
	}
	s.last, s.rev = next, rev
	return nil
}

func (s State) clone() State {
	c := State{Recent: append([]byte(nil), s.Recent...), Pass: make(map[string]float64, len(s.Pass)), Virtual: s.Virtual}
	for k, v := range s.Pass {
		c.Pass[k] = v
	}
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
