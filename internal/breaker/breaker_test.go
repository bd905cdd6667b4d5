package breaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/natstest"
)

const (
	notExist = "ResourceNotFound.ApplicationNotExist"
	bucket   = "OMICSQ_BREAKERS"
)

var bad = Resource{Kind: KindApplication, ID: "app-typo"}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newBucket starts a server with the breaker bucket and returns it and a
// handle on the bucket.
func newBucket(t *testing.T) (*server.Server, jetstream.KeyValue) {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: bucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return ns, kv
}

// handle returns a handle on the bucket over a connection of its own: what
// another replica has.
func handle(t *testing.T, ns *server.Server) jetstream.KeyValue {
	t.Helper()
	_, js := natstest.Connect(t, ns)
	kv, err := js.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// run starts b.Run until the test ends and waits for its cache.
func run(t *testing.T, b *Breaker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, 5*time.Second, "the watcher to sync", b.Synced)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fail(t *testing.T, b *Breaker, r Resource, code, key string) bool {
	t.Helper()
	open, err := b.Failed(t.Context(), r, code, key)
	if err != nil {
		t.Fatalf("Failed(%v, %s, %s): %v", r, code, key, err)
	}
	return open
}

func get(t *testing.T, b *Breaker, id string) Trip {
	t.Helper()
	tr, err := b.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	return tr
}

func check(t *testing.T, b *Breaker, rs ...Resource) (Trip, bool) {
	t.Helper()
	tr, ok, err := b.Check(t.Context(), rs)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return tr, ok
}

// Four distinct keys do not open a threshold of five, repeats of a key
// count once, and the fifth distinct key opens it.
func TestThresholdCountsDistinctKeys(t *testing.T) {
	t.Parallel()
	_, kv := newBucket(t)
	var opened []Trip
	b := New(kv, Config{Actor: "worker-1", OnOpen: func(tr Trip) { opened = append(opened, tr) }})
	id := TripID(notExist, bad)
	for i := 1; i <= 4; i++ {
		if fail(t, b, bad, notExist, fmt.Sprintf("row-%d", i)) {
			t.Fatalf("open after %d distinct keys, want 5", i)
		}
	}
	for range 10 {
		if fail(t, b, bad, notExist, "row-1") {
			t.Fatal("a repeated key opened the trip")
		}
	}
	if tr := get(t, b, id); tr.State != Closed || tr.Keys != 4 || tr.Failures != 14 {
		t.Fatalf("after 4 keys (14 failures): %+v", tr)
	}
	if _, ok := check(t, b, bad); ok {
		t.Fatal("Check finds a closed trip")
	}
	if !fail(t, b, bad, notExist, "row-5") {
		t.Fatal("the fifth distinct key did not open the trip")
	}
	tr, ok := check(t, b, bad)
	if !ok || tr.ID != id || tr.State != Open || tr.Keys != 5 || tr.Failures != 15 || tr.Code != notExist ||
		tr.Resource != bad || tr.OpenedAt.IsZero() || tr.ChangedBy != "worker-1" {
		t.Fatalf("Check after opening: %v %+v", ok, tr)
	}
	// Later failures (calls in flight when it opened) keep it open.
	if !fail(t, b, bad, notExist, "row-6") || len(opened) != 1 || opened[0].ID != id || opened[0].Keys != 5 {
		t.Fatalf("OnOpen calls: %+v", opened)
	}
	// Another code for the same resource, or the same code for another
	// resource, is another trip.
	other := Resource{Kind: KindApplication, ID: "app-other"}
	if fail(t, b, other, notExist, "row-1") || fail(t, b, bad, "ResourceNotFound.TableNotExist", "row-1") {
		t.Fatal("a failure of another trip reports open")
	}
	if _, ok := check(t, b, other); ok {
		t.Fatal("another resource is held")
	}
}

// The same key failing ten times is one key, even with a threshold of two.
func TestSameKeyCountsOnce(t *testing.T) {
	t.Parallel()
	_, kv := newBucket(t)
	b := New(kv, Config{Threshold: 2})
	for range 10 {
		if fail(t, b, bad, notExist, "the-same-key") {
			t.Fatal("one key opened a threshold of 2")
		}
	}
	if tr := get(t, b, TripID(notExist, bad)); tr.State != Closed || tr.Keys != 1 || tr.Failures != 10 {
		t.Fatalf("%+v", tr)
	}
}

// Failures older than the window do not count.
func TestWindow(t *testing.T) {
	t.Parallel()
	_, kv := newBucket(t)
	c := newClock()
	t0 := c.Now()
	b := New(kv, Config{Window: time.Minute, Threshold: 5, Now: c.Now})
	id := TripID(notExist, bad)
	for i := 1; i <= 4; i++ {
		fail(t, b, bad, notExist, fmt.Sprintf("old-%d", i))
	}
	c.Add(61 * time.Second)
	if tr, err := b.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a trip whose failures all left the window: %+v, %v", tr, err)
	}
	if fail(t, b, bad, notExist, "new-1") {
		t.Fatal("opened with 4 failures outside the window")
	}
	if tr := get(t, b, id); tr.Keys != 1 || tr.Failures != 1 || !tr.FirstFailure.Equal(t0.Add(61*time.Second)) {
		t.Fatalf("a fresh count: %+v", tr)
	}
	c.Add(30 * time.Second) // t0+91s
	for i := 2; i <= 4; i++ {
		fail(t, b, bad, notExist, fmt.Sprintf("new-%d", i))
	}
	c.Add(40 * time.Second) // t0+131s: new-1 (t0+61s) is out
	if fail(t, b, bad, notExist, "new-5") {
		t.Fatal("opened with a failure that left the window")
	}
	tr := get(t, b, id)
	if tr.State != Closed || tr.Keys != 4 || !tr.FirstFailure.Equal(t0.Add(91*time.Second)) || !tr.LastFailure.Equal(t0.Add(131*time.Second)) {
		t.Fatalf("after pruning one key: %+v", tr)
	}
	// A key failing again stays in the window from its latest failure.
	c.Add(50 * time.Second) // t0+181s: new-2..4 (t0+91s) are out, new-5 is in
	fail(t, b, bad, notExist, "new-2")
	if fail(t, b, bad, notExist, "new-3") || get(t, b, id).Keys != 3 {
		t.Fatalf("want new-5, new-2, new-3 counted: %+v", get(t, b, id))
	}
	if fail(t, b, bad, notExist, "new-4") {
		t.Fatal("opened with 4 keys")
	}
	if !fail(t, b, bad, notExist, "new-6") {
		t.Fatalf("5 distinct keys within a minute did not open: %+v", get(t, b, id))
	}
}

// Several replicas (instances on their own connections) recording
// concurrently lose no failure and open the trip exactly once.
func TestConcurrentFailedCountsAndOpensOnce(t *testing.T) {
	t.Parallel()
	ns, kv := newBucket(t)
	var opens atomic.Int32
	const threshold = 20
	var bs []*Breaker
	for i := range 3 {
		h := kv
		if i > 0 {
			h = handle(t, ns)
		}
		bs = append(bs, New(h, Config{Threshold: threshold, Actor: fmt.Sprintf("worker-%d", i),
			OnOpen: func(Trip) { opens.Add(1) }}))
	}
	record := func(keys []string) []bool {
		t.Helper()
		jobs := make(chan int)
		results := make([]bool, len(keys))
		var wg sync.WaitGroup
		var errs atomic.Int32
		for g := range 12 {
			wg.Go(func() {
				for j := range jobs {
					open, err := bs[g%len(bs)].Failed(context.Background(), bad, notExist, keys[j])
					if err != nil {
						t.Errorf("Failed: %v", err)
						errs.Add(1)
					}
					results[j] = open
				}
			})
		}
		for j := range keys {
			jobs <- j
		}
		close(jobs)
		wg.Wait()
		if errs.Load() > 0 {
			t.FailNow()
		}
		return results
	}
	// 19 distinct keys, each failing 3 times, concurrently.
	var keys []string
	for rep := range 3 {
		for i := range threshold - 1 {
			keys = append(keys, fmt.Sprintf("row-%02d", (i+rep*7)%(threshold-1)))
		}
	}
	for j, open := range record(keys) {
		if open {
			t.Fatalf("record %d reported open below the threshold", j)
		}
	}
	id := TripID(notExist, bad)
	if tr := get(t, bs[1], id); tr.State != Closed || tr.Keys != threshold-1 || tr.Failures != 3*(threshold-1) || opens.Load() != 0 {
		t.Fatalf("after %d concurrent failures of %d keys: %+v, %d opens", len(keys), threshold-1, tr, opens.Load())
	}
	// The 20th key, from several goroutines at once, with more repeats.
	keys = []string{"row-last", "row-last", "row-last", "row-00", "row-01", "row-last", "row-02", "row-last"}
	results := record(keys)
	tr := get(t, bs[2], id)
	if tr.State != Open || tr.Keys != threshold || tr.Failures != 3*(threshold-1)+len(keys) || opens.Load() != 1 {
		t.Fatalf("after the 20th key: %+v, %d opens (want 1)", tr, opens.Load())
	}
	// Every record of row-last either opened it or came after.
	for _, j := range []int{0, 1, 2, 5, 7} {
		if !results[j] {
			t.Fatalf("record %d of row-last did not report open: %v", j, results)
		}
	}
}

// A trip opened through one replica is seen by Check on another through
// its watcher, without reading the bucket; so are the operator's changes.
func TestCheckSeesTripsThroughTheWatcher(t *testing.T) {
	t.Parallel()
	ns, kv := newBucket(t)
	a := New(kv, Config{Actor: "worker-a"})
	b := New(handle(t, ns), Config{Actor: "worker-b"})
	run(t, b)
	env := Resource{Kind: KindEnvironment, ID: "env-1"}
	if _, ok := check(t, b, env, bad); ok {
		t.Fatal("a trip before any failure")
	}
	for i := range 5 {
		fail(t, a, bad, notExist, fmt.Sprintf("row-%d", i))
	}
	start := time.Now()
	var tr Trip
	waitFor(t, 2*time.Second, "worker-b to see the trip", func() bool {
		var ok bool
		tr, ok = check(t, b, env, bad)
		return ok
	})
	t.Logf("seen by the other replica after %v", time.Since(start))
	if tr.State != Open || tr.Resource != bad || tr.Keys != 5 || tr.ChangedBy != "worker-a" {
		t.Fatalf("%+v", tr)
	}
	op := New(handle(t, ns), Config{Actor: "alice"})
	if err := op.Release(t.Context(), tr.ID, map[string]string{KindApplication: "app-correct"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the release", func() bool {
		tr, _ = check(t, b, bad)
		return tr.State == Released
	})
	if tr.Edits[KindApplication] != "app-correct" || tr.ChangedBy != "alice" {
		t.Fatalf("%+v", tr)
	}
	if err := op.Reset(t.Context(), tr.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the reset", func() bool {
		_, ok := check(t, b, bad)
		return !ok
	})
	if n := b.kvReads.Load(); n != 0 {
		t.Fatalf("Check read the bucket %d times while synced", n)
	}
	// Without a watcher, Check reads the bucket.
	for i := range 5 {
		fail(t, a, bad, notExist, fmt.Sprintf("again-%d", i))
	}
	c := New(handle(t, ns), Config{})
	if tr, ok := check(t, c, bad); !ok || tr.State != Open || c.kvReads.Load() != 1 {
		t.Fatalf("unsynced Check: %v %+v, %d reads", ok, tr, c.kvReads.Load())
	}
}

// Release, DeadLetter and Reset, and what each allows next.
func TestTransitions(t *testing.T) {
	t.Parallel()
	_, kv := newBucket(t)
	c := newClock()
	b := New(kv, Config{Now: c.Now, Actor: "alice", Retention: 2 * time.Hour})
	ctx := t.Context()
	open := func(r Resource) string {
		t.Helper()
		for i := range 5 {
			fail(t, b, r, notExist, fmt.Sprintf("%s-%d", r.ID, i))
		}
		return TripID(notExist, r)
	}
	fix := map[string]string{KindApplication: "app-correct"}

	// Release from Open, with edits.
	id := open(bad)
	c.Add(time.Minute)
	if err := b.Release(ctx, id, fix); err != nil {
		t.Fatal(err)
	}
	tr := get(t, b, id)
	if tr.State != Released || !maps.Equal(tr.Edits, fix) || tr.ChangedBy != "alice" || !tr.ChangedAt.Equal(c.Now()) ||
		!tr.ExpiresAt.Equal(c.Now().Add(2*time.Hour)) || tr.Keys != 5 {
		t.Fatalf("released: %+v", tr)
	}
	if err := b.Release(ctx, id, map[string]string{KindApplication: "app-correct"}); err != nil {
		t.Fatalf("the same release again: %v", err)
	}
	if err := b.Release(ctx, id, map[string]string{KindApplication: "app-other"}); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("a release with other edits: %v", err)
	}
	if err := b.DeadLetter(ctx, id); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("dead-letter a released trip: %v", err)
	}
	// Failures for a released trip (held requests resubmitted without the
	// edits, say) are counted; it stays released.
	if fail(t, b, bad, notExist, "late") {
		t.Fatal("a released trip reported open")
	}
	if tr := get(t, b, id); tr.State != Released || tr.Failures != 6 {
		t.Fatalf("%+v", tr)
	}

	// DeadLetter from Open.
	other := Resource{Kind: KindApplication, ID: "app-gone"}
	id2 := open(other)
	if err := b.DeadLetter(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, id2); err != nil {
		t.Fatalf("dead-letter again: %v", err)
	}
	if err := b.Release(ctx, id2, nil); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("release a dead-lettered trip: %v", err)
	}
	if tr, ok := check(t, b, other); !ok || tr.State != DeadLettered || tr.Edits != nil {
		t.Fatalf("%v %+v", ok, tr)
	}

	// Release without edits.
	plain := Resource{Kind: KindTable, ID: "tab-1"}
	id3 := open(plain)
	if err := b.Release(ctx, id3, map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if tr := get(t, b, id3); tr.State != Released || tr.Edits != nil {
		t.Fatalf("%+v", tr)
	}

	// A closed trip cannot be released; unknown and malformed IDs are not
	// found.
	closed := Resource{Kind: KindProject, ID: "proj-1"}
	fail(t, b, closed, notExist, "one")
	if err := b.Release(ctx, TripID(notExist, closed), nil); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("release a closed trip: %v", err)
	}
	for _, bogus := range []string{TripID("Other.Code", bad), "000000000000-000000", "nope", "", id + "0"} {
		if err := b.Release(ctx, bogus, nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("release %q: %v", bogus, err)
		}
		if err := b.Reset(ctx, bogus); !errors.Is(err, ErrNotFound) {
			t.Errorf("reset %q: %v", bogus, err)
		}
	}

	// Reset forgets it, whatever its state; failures count afresh.
	for _, x := range []string{id, id2, id3, TripID(notExist, closed)} {
		if err := b.Reset(ctx, x); err != nil {
			t.Fatalf("reset %s: %v", x, err)
		}
		if _, err := b.Get(ctx, x); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after reset %s: %v", x, err)
		}
	}
	if _, ok := check(t, b, bad, other, plain, closed); ok {
		t.Fatal("a trip survived its reset")
	}
	if fail(t, b, bad, notExist, "after-reset") || get(t, b, id).Keys != 1 {
		t.Fatalf("after reset: %+v", get(t, b, id))
	}
	if trips, err := b.List(ctx); err != nil || len(trips) != 1 || trips[0].ID != id {
		t.Fatalf("List after the resets: %+v, %v", trips, err)
	}
}

// Only the resource fields may be edited, to a sensible value.
func TestEditValidation(t *testing.T) {
	t.Parallel()
	for _, edits := range []map[string]string{
		nil, {}, {KindApplication: "app-correct"},
		{KindApplication: "app-correct", KindApplicationVersion: "appver-2", KindProject: "p", KindTable: "t", KindEnvironment: "e"},
	} {
		if err := ValidateEdits(edits); err != nil {
			t.Errorf("%v: %v", edits, err)
		}
	}
	for _, edits := range []map[string]string{
		{"Name": "x"}, {"InputBase64": "e30K"}, {"Option.FailureMode": "NoNewCalls"}, {"applicationid": "x"},
		{KindApplication: ""}, {KindApplication: "  "}, {KindApplication: " app"}, {KindTable: "a\nb"},
		{KindApplication: strings.Repeat("a", MaxIDBytes+1)}, {KindApplication: "ok", "ProjectId ": "p"},
	} {
		if err := ValidateEdits(edits); !errors.Is(err, ErrInvalidEdit) {
			t.Errorf("%q: %v, want ErrInvalidEdit", edits, err)
		}
	}
	_, kv := newBucket(t)
	b := New(kv, Config{})
	for i := range 5 {
		fail(t, b, bad, notExist, fmt.Sprint(i))
	}
	id := TripID(notExist, bad)
	for _, edits := range []map[string]string{{"Name": "renamed"}, {KindApplication: bad.ID}} {
		if err := b.Release(t.Context(), id, edits); !errors.Is(err, ErrInvalidEdit) {
			t.Errorf("release with %v: %v", edits, err)
		}
	}
	if tr := get(t, b, id); tr.State != Open {
		t.Fatalf("a refused release changed the trip: %+v", tr)
	}
}

// Released and dead-lettered trips are forgotten after the retention, so
// the same typo later trips again; Run's sweep deletes them and stale
// counts from the bucket.
func TestRetentionExpiry(t *testing.T) {
	t.Parallel()
	ns, kv := newBucket(t)
	c := newClock()
	cfg := Config{Now: c.Now, Window: time.Minute}
	op := New(kv, cfg)
	watcher := New(handle(t, ns), cfg)
	run(t, watcher)
	for i := range 5 {
		fail(t, op, bad, notExist, fmt.Sprint(i))
	}
	id := TripID(notExist, bad)
	if err := op.Release(t.Context(), id, map[string]string{KindApplication: "app-correct"}); err != nil {
		t.Fatal(err)
	}
	gone := Resource{Kind: KindEnvironment, ID: "env-gone"}
	for i := range 5 {
		fail(t, op, gone, "ResourceNotFound.EnvironmentNotExist", fmt.Sprint(i))
	}
	if err := op.DeadLetter(t.Context(), TripID("ResourceNotFound.EnvironmentNotExist", gone)); err != nil {
		t.Fatal(err)
	}
	counting := Resource{Kind: KindTable, ID: "tab-1"}
	fail(t, op, counting, "ResourceNotFound.TableNotExist", "x")
	waitFor(t, 2*time.Second, "the watcher", func() bool {
		_, ok1 := check(t, watcher, bad)
		_, ok2 := check(t, watcher, gone)
		return ok1 && ok2 && watcher.cached(resourceKey(counting)) != nil
	})

	c.Add(24*time.Hour - time.Second)
	if tr, ok := check(t, watcher, bad); !ok || tr.State != Released {
		t.Fatalf("a second before expiry: %v %+v", ok, tr)
	}
	c.Add(2 * time.Second)
	for _, b := range []*Breaker{watcher, op} { // cached and read
		if tr, ok := check(t, b, bad, gone); ok {
			t.Fatalf("after the retention: %+v", tr)
		}
	}
	if trips, err := op.List(t.Context()); err != nil || len(trips) != 0 {
		t.Fatalf("List after the retention: %+v, %v", trips, err)
	}
	if _, err := op.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after the retention: %v", err)
	}
	if err := op.Reset(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reset after the retention: %v", err)
	}

	// The sweep deletes what expired (the entries of gone and counting);
	// bad gets a fresh count first, which the sweep leaves alone.
	if fail(t, op, bad, notExist, "later-typo") {
		t.Fatal("an expired release reopened at once")
	}
	if tr := get(t, op, id); tr.State != Closed || tr.Keys != 1 || tr.Failures != 1 || tr.Edits != nil {
		t.Fatalf("a fresh count after expiry: %+v", tr)
	}
	waitFor(t, 2*time.Second, "the fresh count in the cache", func() bool {
		e := watcher.cached(resourceKey(bad))
		return e != nil && e.Trips[notExist].State == Closed
	})
	watcher.sweep(t.Context())
	for r, want := range map[Resource]bool{bad: true, gone: false, counting: false} {
		_, err := kv.Get(t.Context(), resourceKey(r))
		if got := err == nil; got != want {
			t.Errorf("%v: entry kept %v, want %v (%v)", r, got, want, err)
		}
	}
	for i := range 4 {
		fail(t, op, bad, notExist, fmt.Sprint("later-", i))
	}
	if tr, ok := check(t, op, bad); !ok || tr.State != Open {
		t.Fatalf("the same typo later did not trip again: %v %+v", ok, tr)
	}
}

// Resources that cannot be tracked are refused by Failed and skipped by
// Check; an open trip comes before a decision on the same resource; only a
// digest of each key is stored.
func TestCheckOrderAndBounds(t *testing.T) {
	t.Parallel()
	_, kv := newBucket(t)
	c := newClock()
	b := New(kv, Config{Threshold: 2, Now: c.Now})
	ctx := t.Context()
	for _, tc := range []struct {
		r         Resource
		code, key string
	}{
		{Resource{Kind: "Name", ID: "x"}, notExist, "k"},
		{Resource{Kind: "applicationid", ID: "x"}, notExist, "k"},
		{Resource{Kind: KindApplication}, notExist, "k"},
		{Resource{Kind: KindApplication, ID: strings.Repeat("a", MaxIDBytes+1)}, notExist, "k"},
		{Resource{Kind: KindApplication, ID: "a\x00b"}, notExist, "k"},
		{bad, "", "k"},
		{bad, strings.Repeat("C", MaxCodeBytes+1), "k"},
		{bad, notExist, ""},
	} {
		if _, err := b.Failed(ctx, tc.r, tc.code, tc.key); !errors.Is(err, ErrInvalid) {
			t.Errorf("Failed(%q, %q, %q): %v, want ErrInvalid", tc.r, tc.code, tc.key, err)
		}
		if _, ok := check(t, b, tc.r); ok {
			t.Errorf("Check(%q) found a trip", tc.r)
		}
	}

	const secret = "lims-2026-patient-0042"
	fail(t, b, bad, "InvalidParameterValue.SomethingElse", secret)
	fail(t, b, bad, "InvalidParameterValue.SomethingElse", "k2")
	c.Add(time.Second)
	first := TripID("InvalidParameterValue.SomethingElse", bad)
	if err := b.DeadLetter(ctx, first); err != nil {
		t.Fatal(err)
	}
	if tr, _ := check(t, b, bad); tr.ID != first {
		t.Fatalf("%+v", tr)
	}
	fail(t, b, bad, notExist, "k1")
	fail(t, b, bad, notExist, "k2")
	tr, ok := check(t, b, Resource{Kind: KindTable, ID: "tab-fine"}, bad)
	if !ok || tr.Code != notExist || tr.State != Open {
		t.Fatalf("want the open trip before the dead-lettered one: %+v", tr)
	}
	kve, err := kv.Get(ctx, resourceKey(bad))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(kve.Value()), secret) || strings.Contains(string(kve.Value()), `"k1"`) {
		t.Fatalf("a request key is stored: %s", kve.Value())
	}
	trips, err := b.List(ctx)
	if err != nil || len(trips) != 2 || trips[0].State != Open || trips[1].State != DeadLettered {
		t.Fatalf("List: %+v, %v", trips, err)
	}
	if k, ok := KindOf("ResourceNotFound.TableNotExist"); !ok || k != KindTable {
		t.Fatalf("KindOf: %q %v", k, ok)
	}
	if _, ok := KindOf("InternalError"); ok {
		t.Fatal("KindOf(InternalError)")
	}
	if !ValidID(first) || ValidID("ABCDEF000000-000000") {
		t.Fatal("ValidID")
	}
}
