// Package breaker is the fleet-wide circuit breaker on resources. When many
// different requests are rejected with the same permanent error for the same
// resource in a short time (a typo'd ApplicationId in a whole sample sheet
// answers ResourceNotFound.ApplicationNotExist for every row), every further
// call for that resource would be wasted and every request dead-lettered.
// The breaker opens a *trip* for the (code, resource) pair instead: workers
// hold the requests that name the resource, keep every other request
// flowing, and an operator releases the held requests (optionally with a
// corrected ID) or dead-letters them, once, with `enqueue breaker`.
//
// State lives in a JetStream KV bucket (queue.Topology.BreakerBucket), one
// entry per resource, written with compare-and-set, so every replica sees
// the same trips. Run caches the bucket with a watcher; Check reads the
// cache.
package breaker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
)

// The request fields a trip can be about: the RunApplication fields that
// name a resource. They are also the only fields an operator may edit when
// releasing held requests.
const (
	KindApplication        = "ApplicationId"
	KindApplicationVersion = "ApplicationVersionId"
	KindProject            = "ProjectId"
	KindTable              = "TableId"
	KindEnvironment        = "EnvironmentId"
)

var kinds = []string{KindApplication, KindApplicationVersion, KindProject, KindTable, KindEnvironment}

// Kinds returns the resource kinds, in a fixed order.
func Kinds() []string { return slices.Clone(kinds) }

// ValidKind says whether k is one of Kinds (case-sensitive, as the API).
func ValidKind(k string) bool { return slices.Contains(kinds, k) }

// KindOf returns the resource kind a rejection code is about, for the codes
// that say a named resource does not exist; ok is false for other codes.
// A worker may use it to choose the resource it reports to Failed.
func KindOf(code string) (kind string, ok bool) {
	kind, ok = codeKinds[code]
	return kind, ok
}

var codeKinds = map[string]string{
	"ResourceNotFound.ApplicationNotExist":        KindApplication,
	"ResourceNotFound.ApplicationVersionNotExist": KindApplicationVersion,
	"ResourceNotFound.ProjectNotExist":            KindProject,
	"ResourceNotFound.TableNotExist":              KindTable,
	"ResourceNotFound.EnvironmentNotExist":        KindEnvironment,
}

// Bounds of what is recorded.
const (
	// MaxIDBytes bounds Resource.ID; a longer ID is not tracked (Failed
	// returns ErrInvalid, Check never finds a trip for it).
	MaxIDBytes = 256
	// MaxCodeBytes bounds a rejection code.
	MaxCodeBytes = 128
	// maxCodes bounds the trips (codes) kept for one resource.
	maxCodes = 8
	// maxCASAttempts bounds compare-and-set retries of one operation.
	maxCASAttempts = 64
)

// Resource is a resource named by a request: Kind is the request field
// (one of Kinds), ID its value.
type Resource struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

func (r Resource) String() string { return r.Kind + "=" + r.ID }

// State is the state of a trip.
type State string

const (
	// Closed: failures are being counted; requests flow.
	Closed State = "closed"
	// Open: hold every request that names the resource.
	Open State = "open"
	// Released: the operator released the held requests; submit them again
	// with Trip.Edits applied.
	Released State = "released"
	// DeadLettered: the operator chose to dead-letter the held requests.
	DeadLettered State = "dead_lettered"
)

// Trip is the breaker of one (code, resource) pair.
type Trip struct {
	// ID names the trip for operators: 12 hex digits of the resource's
	// digest, "-", 6 of the code's. Stable for a (code, resource) pair.
	ID       string   `json:"id"`
	Code     string   `json:"code"`
	Resource Resource `json:"resource"`
	State    State    `json:"state"`
	// Keys is the number of distinct request keys counted: within the
	// window while Closed; those that opened it afterwards (at most the
	// threshold: only that many digests are kept).
	Keys int `json:"keys"`
	// Failures counts every rejection recorded since the trip started
	// counting, repeats of a key and rejections after it opened included.
	Failures     int       `json:"failures"`
	FirstFailure time.Time `json:"first_failure"`
	LastFailure  time.Time `json:"last_failure"`
	OpenedAt     time.Time `json:"opened_at,omitzero"`
	// Edits (Released only) are top-level request fields to set on each
	// held request before submitting it again.
	Edits map[string]string `json:"edits,omitempty"`
	// ChangedAt and ChangedBy are the last state change (opening included)
	// and who made it: a worker ID, or the operator.
	ChangedAt time.Time `json:"changed_at,omitzero"`
	ChangedBy string    `json:"changed_by,omitempty"`
	// ExpiresAt (Released and DeadLettered) is when the trip is forgotten:
	// after it, failures for the resource count afresh.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Errors.
var (
	// ErrNotFound: no such trip (never opened, reset, or expired), or a
	// malformed trip ID.
	ErrNotFound = errors.New("breaker: no such trip")
	// ErrNotOpen: the transition needs an open trip.
	ErrNotOpen = errors.New("breaker: the trip is not open")
	// ErrInvalidEdit: an edit of a field other than the resource kinds, or
	// an empty value.
	ErrInvalidEdit = errors.New("breaker: invalid edit")
	// ErrInvalid: Failed was given an unknown kind, an empty or oversized
	// ID or code, or an empty key; nothing was recorded.
	ErrInvalid = errors.New("breaker: invalid failure")
	// ErrContended: compare-and-set kept losing against other writers.
	ErrContended = errors.New("breaker: too many concurrent writers")
)

// Config configures a Breaker. Every replica should use the same Window and
// Threshold.
type Config struct {
	// Window is how recent a failure must be to count. Default 60s.
	Window time.Duration
	// Threshold is the number of distinct request keys failing with the
	// same code for the same resource within Window that opens the trip.
	// Default 5.
	Threshold int
	// Retention is how long a Released or DeadLettered trip is kept (and
	// acted on) before it is forgotten. Default 24h.
	Retention time.Duration
	// Actor is recorded as Trip.ChangedBy for the changes this Breaker
	// makes: the worker ID, or the operator. Default "omicsq".
	Actor string
	// OnOpen is called once fleet-wide when a trip opens, by the Breaker
	// whose Failed opened it, after the write (e.g. to count an alert
	// metric).
	OnOpen func(Trip)
	Now    func() time.Time
	Logger *slog.Logger
}

// Breaker records failures and answers whether a resource is tripped. Its
// methods are safe for concurrent use.
type Breaker struct {
	kv  jetstream.KeyValue
	cfg Config

	mu     sync.RWMutex
	cache  map[string]cached // by KV key; tombstones have e == nil
	synced atomic.Bool

	// kvReads counts Check's fallback reads (tests).
	kvReads atomic.Int64
}

type cached struct {
	e   *entry
	rev uint64
}

// New returns a breaker over the bucket. It does no I/O.
func New(kv jetstream.KeyValue, cfg Config) *Breaker {
	if cfg.Window <= 0 {
		cfg.Window = 60 * time.Second
	}
	if cfg.Threshold <= 0 {
		cfg.Threshold = 5
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.Actor == "" {
		cfg.Actor = "omicsq"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Breaker{kv: kv, cfg: cfg, cache: map[string]cached{}}
}

// Synced says whether the watcher has loaded the bucket, so that Check is
// answered from memory.
func (b *Breaker) Synced() bool { return b.synced.Load() }

// --- the KV entry ---

// entry is the value stored under a resource's KV key.
type entry struct {
	V     int                 `json:"v"`
	Kind  string              `json:"kind"`
	ID    string              `json:"id"`
	Trips map[string]*tripRec `json:"trips"` // by code
}

type tripRec struct {
	State        State             `json:"state"`
	Keys         []keySeen         `json:"keys,omitempty"`
	Failures     int               `json:"failures"`
	FirstFailure time.Time         `json:"first_failure"`
	LastFailure  time.Time         `json:"last_failure"`
	OpenedAt     time.Time         `json:"opened_at,omitzero"`
	Edits        map[string]string `json:"edits,omitempty"`
	ChangedAt    time.Time         `json:"changed_at,omitzero"`
	ChangedBy    string            `json:"changed_by,omitempty"`
	ExpiresAt    time.Time         `json:"expires_at,omitzero"`
}

// keySeen is a request key's digest and its latest failure.
type keySeen struct {
	D string    `json:"d"`
	T time.Time `json:"t"`
}

func (e *entry) clone() *entry {
	c := &entry{V: e.V, Kind: e.Kind, ID: e.ID, Trips: make(map[string]*tripRec, len(e.Trips))}
	for code, t := range e.Trips {
		tc := *t
		tc.Keys = slices.Clone(t.Keys)
		tc.Edits = maps.Clone(t.Edits)
		c.Trips[code] = &tc
	}
	return c
}

func (e *entry) resource() Resource { return Resource{Kind: e.Kind, ID: e.ID} }

// live says whether t still means anything at now: a Closed trip with a
// failure inside the window, an Open one, or a decision not yet expired.
func (t *tripRec) live(now time.Time, window time.Duration) bool {
	switch t.State {
	case Open:
		return true
	case Released, DeadLettered:
		return now.Before(t.ExpiresAt)
	default:
		return t.keysWithin(now, window) > 0
	}
}

func (t *tripRec) keysWithin(now time.Time, window time.Duration) int {
	n := 0
	for _, k := range t.Keys {
		if now.Sub(k.T) <= window {
			n++
		}
	}
	return n
}

func (b *Breaker) trip(code string, r Resource, t *tripRec, now time.Time) Trip {
	keys := len(t.Keys)
	if t.State == Closed {
		keys = t.keysWithin(now, b.cfg.Window)
	}
	return Trip{
		ID: TripID(code, r), Code: code, Resource: r, State: t.State, Keys: keys, Failures: t.Failures,
		FirstFailure: t.FirstFailure, LastFailure: t.LastFailure, OpenedAt: t.OpenedAt, Edits: maps.Clone(t.Edits),
		ChangedAt: t.ChangedAt, ChangedBy: t.ChangedBy, ExpiresAt: t.ExpiresAt,
	}
}

// --- identities ---

func digest(parts ...string) string {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{0})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resourceKey is the KV key of r's entry.
func resourceKey(r Resource) string { return digest("omicsq/breaker/resource", r.Kind, r.ID)[:12] }

func codeDigest(code string) string { return digest("omicsq/breaker/code", code)[:6] }

// keyDigest is what is stored of a request key.
func keyDigest(key string) string { return digest("omicsq/breaker/key", key)[:24] }

// TripID is the ID of the trip of (code, r).
func TripID(code string, r Resource) string { return resourceKey(r) + "-" + codeDigest(code) }

// ValidID says whether id has the form of a trip ID.
func ValidID(id string) bool {
	_, _, ok := parseID(id)
	return ok
}

func parseID(id string) (key, code string, ok bool) {
	key, code, ok = strings.Cut(id, "-")
	if !ok || len(key) != 12 || len(code) != 6 || !isHex(key) || !isHex(code) {
		return "", "", false
	}
	return key, code, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func checkResource(r Resource) error {
	switch {
	case !ValidKind(r.Kind):
		return fmt.Errorf("%w: unknown resource kind (want one of %s)", ErrInvalid, strings.Join(kinds, ", "))
	case r.ID == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, r.Kind)
	case len(r.ID) > MaxIDBytes:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, r.Kind, MaxIDBytes)
	case !printable(r.ID):
		return fmt.Errorf("%w: %s is not printable UTF-8", ErrInvalid, r.Kind)
	}
	return nil
}

// ValidateEdits checks the edits of a release: only the resource kinds
// (top-level request fields naming a resource) may be set, to a non-empty
// printable value without surrounding spaces of at most MaxIDBytes. The
// held requests were rejected because of a resource; an edit of anything
// else could change what the request's key stands for.
func ValidateEdits(edits map[string]string) error {
	for _, f := range slices.Sorted(maps.Keys(edits)) {
		v := edits[f]
		switch {
		case !ValidKind(f):
			return fmt.Errorf("%w: only %s may be edited, not %q", ErrInvalidEdit, strings.Join(kinds, ", "), safeName(f))
		case strings.TrimSpace(v) == "":
			return fmt.Errorf("%w: %s must not be empty", ErrInvalidEdit, f)
		case strings.TrimSpace(v) != v:
			return fmt.Errorf("%w: %s has leading or trailing spaces", ErrInvalidEdit, f)
		case len(v) > MaxIDBytes:
			return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalidEdit, f, MaxIDBytes)
		case !printable(v):
			return fmt.Errorf("%w: %s is not printable UTF-8", ErrInvalidEdit, f)
		}
	}
	return nil
}

// safeName shortens and cleans a field name for an error message.
func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return s
}

// --- reads and compare-and-set ---

func decode(b []byte) (*entry, error) {
	var e entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	if e.Trips == nil {
		e.Trips = map[string]*tripRec{}
	}
	for code, t := range e.Trips {
		if t == nil {
			delete(e.Trips, code)
		}
	}
	return &e, nil
}

// read returns the entry under key and its revision (nil, 0 when absent).
func (b *Breaker) read(ctx context.Context, key string) (*entry, uint64, error) {
	kve, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("breaker: read %s: %w", key, err)
	}
	e, err := decode(kve.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("breaker: entry %s is not decodable: %w", key, err)
	}
	return e, kve.Revision(), nil
}

func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var ae *jetstream.APIError
	return errors.As(err, &ae) &&
		(ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// modify reads the entry under key, lets change edit a copy of it (nil when
// absent), and writes the result with compare-and-set, retrying from a
// fresh read when another writer came first. change returns write=false to
// leave the entry as it is, and next=nil to delete it.
func (b *Breaker) modify(ctx context.Context, key string,
	change func(cur *entry, now time.Time) (next *entry, write bool, err error)) error {
	for attempt := 0; ; attempt++ {
		cur, rev, err := b.read(ctx, key)
		if err != nil {
			return err
		}
		if cur != nil {
			cur = cur.clone()
		}
		next, write, err := change(cur, b.cfg.Now().UTC())
		if err != nil || !write {
			return err
		}
		var newRev uint64
		switch {
		case next == nil && rev == 0:
			return nil
		case next == nil:
			err = b.kv.Delete(ctx, key, jetstream.LastRevision(rev))
		default:
			next.V = 1
			data, merr := json.Marshal(next)
			if merr != nil {
				return merr
			}
			if rev == 0 {
				newRev, err = b.kv.Create(ctx, key, data)
			} else {
				newRev, err = b.kv.Update(ctx, key, data, rev)
			}
		}
		if err == nil {
			if next == nil {
				// The delete marker directly follows rev: every later
				// write has a higher revision than rev+1.
				b.store(key, nil, rev+1)
			} else {
				b.store(key, next, newRev)
			}
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("breaker: write %s: %w", key, err)
		}
		if attempt+1 >= maxCASAttempts {
			return fmt.Errorf("%w: %s", ErrContended, key)
		}
		if err := sleep(ctx, time.Duration(rand.Int64N(int64(min(time.Millisecond<<min(attempt, 5), 20*time.Millisecond))+1))); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// store puts what is known at rev into the cache unless it knows newer.
func (b *Breaker) store(key string, e *entry, rev uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.cache[key]; ok && c.rev >= rev {
		return
	}
	b.cache[key] = cached{e: e, rev: rev}
}

func (b *Breaker) cached(key string) *entry {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.cache[key].e
}

// --- recording failures ---

// Failed records that the request with idempotency key key was rejected
// with code for r, and returns whether the trip (code, r) is open after
// this record. Only a digest of key is stored. A key counts once however
// often it fails; failures older than Window do not count; Threshold
// distinct keys open the trip. A Released or DeadLettered trip stays as the
// operator left it (the failure is counted, nothing opens) until it
// expires.
func (b *Breaker) Failed(ctx context.Context, r Resource, code, key string) (open bool, err error) {
	if err := checkResource(r); err != nil {
		return false, err
	}
	switch {
	case code == "" || len(code) > MaxCodeBytes || !printable(code):
		return false, fmt.Errorf("%w: the code must be 1-%d printable bytes", ErrInvalid, MaxCodeBytes)
	case key == "":
		return false, fmt.Errorf("%w: empty request key", ErrInvalid)
	}
	d := keyDigest(key)
	var opened bool
	var result tripRec
	err = b.modify(ctx, resourceKey(r), func(cur *entry, now time.Time) (*entry, bool, error) {
		opened = false
		if cur == nil {
			cur = &entry{Kind: r.Kind, ID: r.ID, Trips: map[string]*tripRec{}}
		} else if cur.Kind != r.Kind || cur.ID != r.ID {
			return nil, false, fmt.Errorf("%w: %s shares its digest with another resource; not tracked", ErrInvalid, r.Kind)
		}
		t := cur.Trips[code]
		if t == nil || !t.live(now, b.cfg.Window) {
			if t == nil && !b.makeRoom(cur, now) {
				return nil, false, fmt.Errorf("%w: %d trips are live for this %s already", ErrInvalid, maxCodes, r.Kind)
			}
			t = &tripRec{State: Closed, FirstFailure: now}
			cur.Trips[code] = t
		}
		t.Failures++
		t.LastFailure = now
		switch t.State {
		case Closed:
			kept, pruned := t.Keys[:0], false
			for _, k := range t.Keys {
				switch {
				case now.Sub(k.T) > b.cfg.Window:
					pruned = true
				case k.D != d:
					kept = append(kept, k)
				}
			}
			// Oldest first; a threshold lowered since the last write drops
			// the oldest.
			kept = append(kept, keySeen{D: d, T: now})
			if over := len(kept) - b.cfg.Threshold; over > 0 {
				kept, pruned = kept[over:], true
			}
			t.Keys = kept
			if pruned { // the earliest failure still counted
				t.FirstFailure = now
				for _, k := range kept {
					if k.T.Before(t.FirstFailure) {
						t.FirstFailure = k.T
					}
				}
			}
			if len(t.Keys) >= b.cfg.Threshold {
				t.State, t.OpenedAt, t.ChangedAt, t.ChangedBy = Open, now, now, b.cfg.Actor
				opened = true
			}
		case Open:
			if len(t.Keys) < b.cfg.Threshold && !slices.ContainsFunc(t.Keys, func(k keySeen) bool { return k.D == d }) {
				t.Keys = append(t.Keys, keySeen{D: d, T: now})
			}
		}
		result = *t
		return cur, true, nil
	})
	if err != nil {
		return false, err
	}
	if opened {
		tr := b.trip(code, r, &result, result.OpenedAt)
		b.cfg.Logger.Error("breaker open: holding every request for the resource until an operator releases or dead-letters them",
			"trip", tr.ID, "code", code, "kind", r.Kind, "resource", r.ID, "keys", tr.Keys, "window", b.cfg.Window,
			"release", "enqueue breaker release "+tr.ID+" [--set "+r.Kind+"=...]")
		if b.cfg.OnOpen != nil {
			b.cfg.OnOpen(tr)
		}
	}
	return result.State == Open, nil
}

// makeRoom drops trips of cur that mean nothing any more, and says whether
// there is room for one more.
func (b *Breaker) makeRoom(cur *entry, now time.Time) bool {
	for code, t := range cur.Trips {
		if !t.live(now, b.cfg.Window) {
			delete(cur.Trips, code)
		}
	}
	return len(cur.Trips) < maxCodes
}

// --- checking ---

// Check returns the first trip, in the order of rs, that is Open, Released
// or DeadLettered (false when there is none). Within one resource an Open
// trip comes first, then the latest decision. It reads the watcher's cache
// once Run has synced it, and the bucket before (or while the watcher is
// down); only then can it fail. Resources that cannot be tracked (unknown
// kind, empty or oversized ID) are skipped.
func (b *Breaker) Check(ctx context.Context, rs []Resource) (Trip, bool, error) {
	var now time.Time
	for _, r := range rs {
		if checkResource(r) != nil {
			continue
		}
		key := resourceKey(r)
		var e *entry
		if b.synced.Load() {
			e = b.cached(key)
		} else {
			b.kvReads.Add(1)
			var err error
			if e, _, err = b.read(ctx, key); err != nil {
				return Trip{}, false, err
			}
		}
		if e == nil || e.Kind != r.Kind || e.ID != r.ID {
			continue
		}
		if now.IsZero() {
			now = b.cfg.Now().UTC()
		}
		if t, ok := b.pick(e, now); ok {
			return t, true, nil
		}
	}
	return Trip{}, false, nil
}

func (b *Breaker) pick(e *entry, now time.Time) (Trip, bool) {
	var best *tripRec
	var bestCode string
	for _, code := range slices.Sorted(maps.Keys(e.Trips)) {
		t := e.Trips[code]
		if t.State == Closed || !t.live(now, b.cfg.Window) {
			continue
		}
		if better(t, best) {
			best, bestCode = t, code
		}
	}
	if best == nil {
		return Trip{}, false
	}
	return b.trip(bestCode, e.resource(), best, now), true
}

// better says whether t is to be answered rather than best: an open trip
// first, then the latest decision.
func better(t, best *tripRec) bool {
	switch {
	case best == nil:
		return true
	case (t.State == Open) != (best.State == Open):
		return t.State == Open
	}
	return t.ChangedAt.After(best.ChangedAt)
}

// --- operator side ---

// List returns every live trip in the bucket (Closed ones still counting
// included), read from the bucket itself: open ones first (oldest first),
// then released, dead-lettered and closed ones, latest failure first.
func (b *Breaker) List(ctx context.Context) ([]Trip, error) {
	w, err := b.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("breaker: list: %w", err)
	}
	defer func() { _ = w.Stop() }()
	now := b.cfg.Now().UTC()
	var out []Trip
	for {
		var kve jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("breaker: list: the watch closed")
			}
			kve = e
		}
		if kve == nil {
			break
		}
		e, err := decode(kve.Value())
		if err != nil {
			b.cfg.Logger.Warn("breaker: ignoring an undecodable entry", "key", kve.Key(), "error", err)
			continue
		}
		for code, t := range e.Trips {
			if t.live(now, b.cfg.Window) {
				out = append(out, b.trip(code, e.resource(), t, now))
			}
		}
	}
	rank := map[State]int{Open: 0, Released: 1, DeadLettered: 2, Closed: 3}
	slices.SortFunc(out, func(x, y Trip) int {
		if d := rank[x.State] - rank[y.State]; d != 0 {
			return d
		}
		if x.State == Open && !x.OpenedAt.Equal(y.OpenedAt) {
			return x.OpenedAt.Compare(y.OpenedAt)
		}
		if c := y.LastFailure.Compare(x.LastFailure); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return out, nil
}

// Get returns the live trip id, read from the bucket.
func (b *Breaker) Get(ctx context.Context, id string) (Trip, error) {
	key, cd, ok := parseID(id)
	if !ok {
		return Trip{}, fmt.Errorf("%w: malformed trip ID (want 12 hex digits, -, 6 hex digits)", ErrNotFound)
	}
	e, _, err := b.read(ctx, key)
	if err != nil {
		return Trip{}, err
	}
	now := b.cfg.Now().UTC()
	if code, t := find(e, cd); t != nil && t.live(now, b.cfg.Window) {
		return b.trip(code, e.resource(), t, now), nil
	}
	return Trip{}, fmt.Errorf("%w: %s", ErrNotFound, id)
}

func find(e *entry, cd string) (string, *tripRec) {
	if e == nil {
		return "", nil
	}
	for code, t := range e.Trips {
		if codeDigest(code) == cd {
			return code, t
		}
	}
	return "", nil
}

// Release releases the held requests of the open trip id: they are to be
// submitted again with edits applied (nil: as they are). The edits are
// checked with ValidateEdits, and may not set the tripped field to the
// value that tripped it. Releasing a released trip again with the same
// edits does nothing; any other transition than from Open is ErrNotOpen.
// The trip is kept for Retention, then forgotten.
func (b *Breaker) Release(ctx context.Context, id string, edits map[string]string) error {
	if err := ValidateEdits(edits); err != nil {
		return err
	}
	if len(edits) == 0 {
		edits = nil
	}
	return b.decide(ctx, id, Released, func(e *entry, t *tripRec) (bool, error) {
		if v, ok := edits[e.Kind]; ok && v == e.ID {
			return false, fmt.Errorf("%w: %s is set to the value that tripped", ErrInvalidEdit, e.Kind)
		}
		if t.State == Released {
			if maps.Equal(t.Edits, edits) {
				return false, nil
			}
			// Some held requests may be resubmitted already: one batch,
			// one set of edits. (A wrong correction trips a breaker of
			// its own, which is released in turn.)
			return false, fmt.Errorf("%w: %s is released already, with other edits", ErrNotOpen, e.Kind)
		}
		t.Edits = maps.Clone(edits)
		return true, nil
	})
}

// DeadLetter marks the open trip id so that the held requests are
// dead-lettered. Doing it again does nothing; any other transition than
// from Open is ErrNotOpen. The trip is kept for Retention, then forgotten.
func (b *Breaker) DeadLetter(ctx context.Context, id string) error {
	return b.decide(ctx, id, DeadLettered, func(_ *entry, t *tripRec) (bool, error) {
		return t.State != DeadLettered, nil
	})
}

// decide moves the trip id to state; apply checks and completes the change
// (write=false: it is already in that state).
func (b *Breaker) decide(ctx context.Context, id string, state State, apply func(*entry, *tripRec) (bool, error)) error {
	key, cd, ok := parseID(id)
	if !ok {
		return fmt.Errorf("%w: malformed trip ID (want 12 hex digits, -, 6 hex digits)", ErrNotFound)
	}
	return b.modify(ctx, key, func(cur *entry, now time.Time) (*entry, bool, error) {
		_, t := find(cur, cd)
		if t == nil || !t.live(now, b.cfg.Window) {
			return nil, false, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if t.State != Open && t.State != state {
			return nil, false, fmt.Errorf("%w: %s is %s", ErrNotOpen, id, t.State)
		}
		write, err := apply(cur, t)
		if err != nil || !write {
			return nil, false, err
		}
		t.State, t.ChangedAt, t.ChangedBy, t.ExpiresAt = state, now, b.cfg.Actor, now.Add(b.cfg.Retention)
		return cur, true, nil
	})
}

// Reset closes the trip id and forgets it, whatever its state: requests
// for the resource flow again as they are, and failures count afresh.
func (b *Breaker) Reset(ctx context.Context, id string) error {
	key, cd, ok := parseID(id)
	if !ok {
		return fmt.Errorf("%w: malformed trip ID (want 12 hex digits, -, 6 hex digits)", ErrNotFound)
	}
	return b.modify(ctx, key, func(cur *entry, now time.Time) (*entry, bool, error) {
		code, t := find(cur, cd)
		if t == nil || !t.live(now, b.cfg.Window) {
			return nil, false, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		delete(cur.Trips, code)
		b.makeRoom(cur, now)
		if len(cur.Trips) == 0 {
			return nil, true, nil
		}
		return cur, true, nil
	})
}

// --- the watcher ---

// Run keeps the cache of the bucket that Check reads, and deletes expired
// trips. It returns when ctx ends; if the watch fails it is started again
// (Check reads the bucket meanwhile).
func (b *Breaker) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		err := b.watch(ctx)
		b.synced.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		b.cfg.Logger.Warn("breaker: the bucket watch ended; Check reads the bucket until it is back", "error", err, "retry_in", backoff)
		if sleep(ctx, backoff) != nil {
			return nil
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// sweepEvery is how often Run deletes expired trips.
func (b *Breaker) sweepEvery() time.Duration {
	return min(max(b.cfg.Window, 10*time.Second), time.Minute)
}

func (b *Breaker) watch(ctx context.Context) error {
	w, err := b.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	fresh := map[string]cached{}
	sweep := time.NewTicker(b.sweepEvery())
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case kve, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch closed")
			}
			if kve == nil { // the initial values are in
				if fresh != nil {
					b.mu.Lock()
					b.cache = fresh
					b.mu.Unlock()
					fresh = nil
					b.synced.Store(true)
				}
				continue
			}
			c := cached{rev: kve.Revision()}
			if kve.Operation() == jetstream.KeyValuePut {
				e, err := decode(kve.Value())
				if err != nil {
					b.cfg.Logger.Warn("breaker: ignoring an undecodable entry", "key", kve.Key(), "error", err)
				} else {
					c.e = e
				}
			}
			if fresh != nil {
				fresh[kve.Key()] = c
			} else {
				b.store(kve.Key(), c.e, c.rev)
			}
		case <-sweep.C:
			if fresh == nil {
				b.sweep(ctx)
			}
		}
	}
}

// sweep deletes the trips that mean nothing any more (expired decisions,
// closed trips without a failure in the window) and the entries left empty.
// Replicas sweep concurrently; compare-and-set keeps them from erasing a
// newer write.
func (b *Breaker) sweep(ctx context.Context) {
	now := b.cfg.Now().UTC()
	var stale []string
	b.mu.RLock()
	for key, c := range b.cache {
		if c.e == nil {
			continue
		}
		for _, t := range c.e.Trips {
			if !t.live(now, b.cfg.Window) {
				stale = append(stale, key)
				break
			}
		}
	}
	b.mu.RUnlock()
	for _, key := range stale {
		err := b.modify(ctx, key, func(cur *entry, now time.Time) (*entry, bool, error) {
			if cur == nil {
				return nil, false, nil
			}
			n := len(cur.Trips)
			b.makeRoom(cur, now)
			switch {
			case len(cur.Trips) == n:
				return nil, false, nil
			case len(cur.Trips) == 0:
				return nil, true, nil
			}
			return cur, true, nil
		})
		if err != nil && ctx.Err() == nil {
			b.cfg.Logger.Warn("breaker: could not delete expired trips", "key", key, "error", err)
		}
	}
}
