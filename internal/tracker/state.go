package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/metrics"
)

// tracked is an active (not yet terminal) entry as the leader holds it.
type tracked struct {
	token string
	entry Entry
	rev   uint64
	// written is when the KV entry was last written (server time); an
	// active entry is rewritten before the bucket's TTL could expire it.
	written time.Time
	// seen is when DescribeRunGroups last reported the group, or when this
	// leadership started following it; visible says the API reported it.
	seen    time.Time
	visible bool
}

// state is the leader's active set, fed by the runs bucket's watch (every
// entry, whoever wrote it) and by the leader's own writes. Revisions order
// the two: an update older than what is held is ignored.
type state struct {
	mu     sync.Mutex
	active map[string]*tracked
	// gone holds the revision at which an entry left the set, so that the
	// watch's late delivery of an older revision (our own earlier write)
	// does not bring it back.
	gone   map[string]uint64
	loaded chan struct{} // closed once the watch delivered every entry
	once   sync.Once
	// batches is the leadership's view of the batches bucket; nil when
	// batches are off.
	batches *batches
}

func newState() *state {
	return &state{active: make(map[string]*tracked), gone: make(map[string]uint64), loaded: make(chan struct{})}
}

// upsert takes e at rev, unless the set already holds a later revision. A
// terminal entry leaves the set.
func (s *state) upsert(token string, e Entry, rev uint64, written, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.active[token]
	if ok && cur.rev >= rev || s.gone[token] >= rev {
		return
	}
	if e.Terminal {
		if ok {
			delete(s.active, token)
			s.gone[token] = rev
		}
		return
	}
	if !ok {
		cur = &tracked{token: token, seen: now}
		s.active[token] = cur
	}
	cur.entry, cur.rev, cur.written = e, rev, written
}

// remove drops token if the set holds it at rev or earlier.
func (s *state) remove(token string, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.active[token]; ok && cur.rev <= rev {
		delete(s.active, token)
		s.gone[token] = rev
	}
}

// snapshot copies the active entries, so a cycle can work without the lock.
func (s *state) snapshot() []tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]tracked, 0, len(s.active))
	for _, t := range s.active {
		c := *t
		c.entry = t.entry.clone()
		out = append(out, c)
	}
	return out
}

// markSeen records that the API reported token's group at now.
func (s *state) markSeen(token string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.active[token]; ok {
		t.seen, t.visible = now, true
	}
}

// gauges returns the run groups by last status (metrics labels) and the
// lag: how long ago the stalest pollable group was seen.
func (s *state) gauges(now time.Time) (map[string]int, time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byStatus := make(map[string]int)
	var oldest time.Time
	for _, t := range s.active {
		switch {
		case t.entry.Unresolved:
			byStatus[metrics.TrackerUnresolved]++
			continue
		case !t.visible && t.entry.Status == "":
			byStatus[metrics.TrackerUnseen]++
		default:
			byStatus[strings.ToLower(t.entry.Status)]++
		}
		if oldest.IsZero() || t.seen.Before(oldest) {
			oldest = t.seen
		}
	}
	var lag time.Duration
	if !oldest.IsZero() {
		lag = now.Sub(oldest)
	}
	return byStatus, lag, len(s.active)
}

// watch feeds the set from the runs bucket until ctx ends: first every
// entry (then loaded is closed), then every change.
func (s *state) watch(ctx context.Context, kv jetstream.KeyValue, now func() time.Time, onErr func(error)) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the runs bucket's watch ended") // ends the leadership: it restarts cleanly
			}
			if u == nil {
				s.once.Do(func() { close(s.loaded) })
				continue
			}
			s.apply(u, now(), onErr)
		}
	}
}

func (s *state) apply(u jetstream.KeyValueEntry, now time.Time, onErr func(error)) {
	if u.Operation() != jetstream.KeyValuePut {
		s.remove(u.Key(), u.Revision())
		return
	}
	var e Entry
	if err := json.Unmarshal(u.Value(), &e); err != nil {
		onErr(err)
		return
	}
	s.upsert(u.Key(), e, u.Revision(), u.Created(), now)
}
