// Package batch is the fleet's side of batches (client.BatchRecord): the
// compare-and-set updates of member records that the workers (dead
// letters) and the run tracker (run-group progress) make, and the
// watch-fed set of cancelled batches a worker checks before every call.
// docs/lifecycle.md ("Batches") is the contract.
package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/keys"
)

// maxConflicts bounds the compare-and-set attempts of one update: a member
// has two writers at most (its worker and the tracker), so a few suffice;
// each retry waits a few random milliseconds so racing writers spread out.
const maxConflicts = 8

// Store updates the records of a batches bucket.
type Store struct {
	KV  jetstream.KeyValue
	Now func() time.Time
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

// UpdateMember applies change to key's member record of batch id, creating
// it (with Key set) if the batch never registered it: a producer that only
// sets the header still gets its members. change reports whether it
// changed anything; nothing is written otherwise. The write is a
// compare-and-set, retried on conflict, so a concurrent writer's change is
// never lost.
func (s *Store) UpdateMember(ctx context.Context, id, key string, change func(m *client.BatchMember) bool) (client.BatchMember, error) {
	k := keys.BatchMember(id, key)
	for range maxConflicts {
		var m client.BatchMember
		var rev uint64
		e, err := s.KV.Get(ctx, k)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			m = client.BatchMember{Key: key}
		case err != nil:
			return m, fmt.Errorf("read batch member: %w", err)
		default:
			if err := json.Unmarshal(e.Value(), &m); err != nil {
				return m, fmt.Errorf("decode batch member: %w", err)
			}
			rev = e.Revision()
		}
		if !change(&m) {
			return m, nil
		}
		m.UpdatedAt = s.now()
		b, _ := json.Marshal(m)
		if rev == 0 {
			_, err = s.KV.Create(ctx, k, b)
		} else {
			_, err = s.KV.Update(ctx, k, b, rev)
		}
		if err == nil {
			return m, nil
		}
		if !conflict(err) {
			return m, fmt.Errorf("write batch member: %w", err)
		}
		sleep(ctx, time.Duration(1+rand.IntN(10))*time.Millisecond)
	}
	return client.BatchMember{}, errors.New("write batch member: the record kept changing")
}

// EnsureRecord creates batch id's record if there is none: a batch seen
// only through its header gets one with Members 0 (size unknown).
func (s *Store) EnsureRecord(ctx context.Context, id string) error {
	b, _ := json.Marshal(client.BatchRecord{ID: id, CreatedAt: s.now()})
	_, err := s.KV.Create(ctx, keys.BatchMeta(id), b)
	if err == nil || errors.Is(err, jetstream.ErrKeyExists) {
		return nil
	}
	return fmt.Errorf("create batch record: %w", err)
}

// Record reads batch id's record; ok false if it has none.
func (s *Store) Record(ctx context.Context, id string) (rec client.BatchRecord, rev uint64, ok bool, err error) {
	e, err := s.KV.Get(ctx, keys.BatchMeta(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, 0, false, nil
	}
	if err != nil {
		return rec, 0, false, fmt.Errorf("read batch record: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, 0, false, fmt.Errorf("decode batch record: %w", err)
	}
	return rec, e.Revision(), true, nil
}

// MarkCompleted sets the record's CompletedAt (compare-and-set, once).
func (s *Store) MarkCompleted(ctx context.Context, id string, at time.Time) error {
	for range maxConflicts {
		rec, rev, ok, err := s.Record(ctx, id)
		if err != nil || !ok || rec.CompletedAt != nil {
			return err
		}
		at := at.UTC()
		rec.CompletedAt = &at
		b, _ := json.Marshal(rec)
		if _, err := s.KV.Update(ctx, keys.BatchMeta(id), b, rev); err == nil || !conflict(err) {
			return err
		}
	}
	return errors.New("write batch record: the record kept changing")
}

// DeadLettered records that key, of batch id, ended as a dead letter for
// reason: terminal for the batch, unless the key has a run group (a refused
// duplicate of a submitted key is dead-lettered too, and the group is what
// counts then).
func (s *Store) DeadLettered(ctx context.Context, id, key string, reason client.DeadLetterReason) error {
	_, err := s.UpdateMember(ctx, id, key, func(m *client.BatchMember) bool {
		if m.RunGroupID != "" || m.DeadLettered && m.Reason == reason {
			return false
		}
		m.DeadLettered, m.Reason, m.Terminal, m.Status = true, reason, true, ""
		return true
	})
	return err
}

func conflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Gate is a worker's view of the batches bucket: the set of cancelled
// batches, fed by a watch of the records (never of the members), so that
// checking a request costs no call; and the member updates of dead
// letters. Run it with Run; until its bucket is bound it knows no
// cancelled batch and records nothing.
type Gate struct {
	js     jetstream.JetStream
	bucket string
	log    *slog.Logger

	mu        sync.Mutex
	store     *Store
	cancelled map[string]bool // batch token → cancelled
	// ready is closed once the first bind failed (no batches bucket) or
	// the watch delivered every record: a worker that starts with a
	// cancelled batch queued must know it before its first call.
	ready     chan struct{}
	readyOnce sync.Once
}

// NewGate returns the gate of bucket. It performs no I/O.
func NewGate(js jetstream.JetStream, bucket string, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{js: js, bucket: bucket, log: log.With("component", "batches"), cancelled: make(map[string]bool), ready: make(chan struct{})}
}

// readyWait bounds how long Cancelled waits for the gate to be ready.
const readyWait = 5 * time.Second

// Cancelled reports whether batch id was cancelled, as far as the watch
// has delivered: from memory once the watch has loaded (at start it waits
// for that, at most readyWait). A cancellation a moment old may not be
// seen yet: a request handled in that moment is submitted, and the tracker
// terminates its run group like any running member's.
func (g *Gate) Cancelled(ctx context.Context, id string) bool {
	if id == "" {
		return false
	}
	select {
	case <-g.ready:
	default:
		t := time.NewTimer(readyWait)
		select {
		case <-g.ready:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cancelled[keys.BatchMeta(id)]
}

// DeadLettered records key's dead letter in its member record; without a
// bound bucket (batches off, or not provisioned yet) it does nothing.
func (g *Gate) DeadLettered(ctx context.Context, id, key string, reason client.DeadLetterReason) error {
	g.mu.Lock()
	s := g.store
	g.mu.Unlock()
	if s == nil || id == "" {
		return nil
	}
	return s.DeadLettered(ctx, id, key, reason)
}

// Run binds the bucket (retrying while it is missing) and watches the
// batch records until ctx ends.
func (g *Gate) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		kv, err := g.js.KeyValue(ctx, g.bucket)
		if err != nil {
			if ctx.Err() == nil {
				g.log.Debug("batches bucket not bound; batches are not checked yet", "bucket", g.bucket, "error", err)
			}
			g.readyOnce.Do(func() { close(g.ready) }) // no bucket: nothing to wait for
			sleep(ctx, 10*time.Second)
			continue
		}
		g.mu.Lock()
		g.store = &Store{KV: kv}
		g.mu.Unlock()
		if err := g.watch(ctx, kv); err != nil && ctx.Err() == nil {
			g.log.Warn("the batches watch ended; restarting it", "error", err)
			sleep(ctx, time.Second)
		}
	}
	return nil
}

// watch follows the records: "*" matches the one-token keys of the
// records, not the members' three-token keys.
func (g *Gate) watch(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.Watch(ctx, "*")
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed")
			}
			if e == nil {
				g.readyOnce.Do(func() { close(g.ready) })
				continue
			}
			var rec client.BatchRecord
			cancelled := e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &rec) == nil && rec.CancelledAt != nil
			g.mu.Lock()
			if cancelled {
				g.cancelled[e.Key()] = true
			} else {
				delete(g.cancelled, e.Key())
			}
			g.mu.Unlock()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
