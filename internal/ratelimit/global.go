package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// opTimeout bounds one KV operation, so that a caller without a
	// deadline keeps retrying (and a dead connection is noticed).
	opTimeout = time.Second
	// watchStaleAfter: if the watch has delivered nothing for this long
	// after one of our own writes (which it must echo), it is restarted.
	watchStaleAfter = 3 * time.Second
	// watchCheckEvery is how often the watch's health is checked.
	watchCheckEvery = 250 * time.Millisecond
	// skewSamples is how many watched updates one clock-offset estimate uses.
	skewSamples = 32
	// warnEvery rate-limits repeated warnings.
	warnEvery = time.Minute
)

// errConflict means a compare-and-set lost to another writer; the cache has
// been refreshed and the attempt can be repeated at once.
var errConflict = errors.New("ratelimit: revision conflict")

// Global is a rate limiter shared by every process that uses the same key in
// the same JetStream KV bucket. Its methods are safe for concurrent use.
type Global struct {
	js   jetstream.JetStream
	key  string
	cfg  Config
	p    params
	log  *slog.Logger
	rand *rand.Rand // jitter only; guarded by mu

	// turn lets one goroutine of this process at a time read-modify-write
	// the key: local callers then never conflict with each other, only
	// with other processes.
	turn chan struct{}

	mu        sync.Mutex
	kv        jetstream.KeyValue
	cache     snapshot
	changed   chan struct{} // closed and replaced whenever cache changes
	pending   int           // callers in Wait that hold no reservation yet
	latency   time.Duration // moving average of a KV write
	skewMin   time.Duration // smallest local-minus-server offset in this batch
	skewCount int
	warned    map[string]time.Time

	// lastWrite is when our last successful write was sent and lastWatch
	// when the watch last delivered (unix ns): a live watch delivers every
	// write after it was sent.
	lastWrite atomic.Int64
	lastWatch atomic.Int64
	offset    atomic.Int64 // ClockOffset, ns

	grants, conflicts, errs, abandoned, late, throttles, decreases, coldStarts atomic.Uint64

	closed    chan struct{}
	closeOnce sync.Once
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// snapshot is what this process last knew of the key.
type snapshot struct {
	st    state
	rev   uint64
	known bool // false: read the key before using it
	// absent: the key does not exist (never created, deleted or purged).
	absent bool
	// invalid: the value at rev cannot be decoded; it is overwritten by a
	// cold state.
	invalid bool
}

// NewGlobal binds the KV bucket (creating it if missing), reads the key and
// starts a goroutine that watches it; Close stops that goroutine. ctx bounds
// only this setup, not the limiter's life. key should come from Key.
func NewGlobal(ctx context.Context, js jetstream.JetStream, key string, cfg Config) (*Global, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !validKey.MatchString(key) {
		return nil, fmt.Errorf("ratelimit: invalid key %q", key)
	}
	g := &Global{
		js:        js,
		key:       key,
		cfg:       cfg,
		p:         cfg.params(),
		log:       cfg.Logger.With("ratelimit_key", key),
		rand:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		turn:      make(chan struct{}, 1),
		changed:   make(chan struct{}),
		warned:    make(map[string]time.Time),
		closed:    make(chan struct{}),
		watchDone: make(chan struct{}),
	}
	if err := g.bind(ctx); err != nil {
		return nil, err
	}
	if _, err := g.refresh(ctx); err != nil {
		return nil, fmt.Errorf("ratelimit: read %s: %w", key, err)
	}
	watchCtx, stop := context.WithCancel(context.Background())
	g.stopWatch = stop
	go g.watch(watchCtx)
	return g, nil
}

// Wait blocks until the caller may make one call, and returns how long it
// waited. It fails closed: without a successful write of the shared state
// there is no grant, so while NATS is unreachable it keeps retrying until ctx
// ends, and then returns ctx's error. It returns ErrClosed after Close.
func (g *Global) Wait(ctx context.Context) (time.Duration, error) {
	start := g.cfg.Now()
	waited := func() time.Duration { return g.cfg.Now().Sub(start) }
	// Ready counts the callers that still need a slot.
	pending := pendingMark{g: g}
	pending.set(true)
	defer pending.set(false)
	bo := newRetryBackoff()
	for {
		if err := g.alive(ctx); err != nil {
			return waited(), err
		}
		var res reservation
		err := g.withTurn(ctx, func(ctx context.Context) (err error) {
			res, err = g.reserve(ctx)
			return err
		})
		switch {
		case errors.Is(err, errConflict):
			continue
		case err != nil:
			if err := g.alive(ctx); err != nil {
				return waited(), err
			}
			g.warn("reserve", "ratelimit: cannot reach the shared state; not granting (fail closed)", "err", err)
			g.invalidate()
			if err := g.sleep(ctx, bo.NextBackOff()); err != nil {
				return waited(), err
			}
			continue
		case !res.ok:
			bo.Reset()
			// The slot is beyond the horizon: come back when it enters it.
			// A little jitter lets the watch deliver the winner's write
			// before the other replicas, woken at the same instant, try.
			if err := g.sleepUntil(ctx, res.slot-g.p.horizon+g.jitter()); err != nil {
				return waited(), err
			}
			continue
		}
		bo.Reset()
		pending.set(false)
		if err := g.sleepUntil(ctx, res.slot); err != nil {
			g.abandoned.Add(1)
			return waited(), err
		}
		// A call made later than Guard/2 after its slot could land inside
		// the window of later grants: give the slot up and reserve again.
		if late := g.now() - res.slot; late > int64(g.cfg.Guard/2) {
			g.late.Add(1)
			pending.set(true)
			continue
		}
		g.grants.Add(1)
		return waited(), nil
	}
}

// reserve makes one attempt to append a grant to the shared log. It runs with
// the turn held.
func (g *Global) reserve(ctx context.Context) (reservation, error) {
	snap, err := g.current(ctx)
	if err != nil {
		return reservation{}, err
	}
	now := g.now()
	if snap.absent || snap.invalid {
		return reservation{}, g.reset(ctx, snap, now)
	}
	next := snap.st.clone()
	res := next.reserve(now+int64(g.lead()), now, g.p)
	if !res.ok {
		return res, nil
	}
	if err := g.write(ctx, snap, next); err != nil {
		return reservation{}, err
	}
	if res.recovered {
		g.log.Info("ratelimit: rate fully recovered", "rate", g.p.maxRate)
	}
	return res, nil
}

// reset overwrites an absent or unreadable state with a cold one (see
// coldState) and reports errConflict so that the caller reserves again.
func (g *Global) reset(ctx context.Context, snap snapshot, now int64) error {
	cold := coldState(now, g.p)
	value := cold.encode(g.p)
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	started := g.now()
	var rev uint64
	var err error
	if snap.invalid {
		rev, err = g.bucket().Update(opCtx, g.key, value, snap.rev)
	} else {
		rev, err = g.bucket().Create(opCtx, g.key, value)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		g.conflicts.Add(1)
		if _, err := g.refresh(ctx); err != nil {
			return err
		}
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("ratelimit: create state: %w", err)
	}
	g.lastWrite.Store(started)
	g.store(snapshot{st: cold, rev: rev, known: true}, false)
	g.coldStarts.Add(1)
	g.log.Info("ratelimit: created the shared state; first grant delayed so it cannot overlap grants made before",
		"delay", time.Duration(g.p.horizon+g.p.span))
	return errConflict
}

// write stores next over snap by compare-and-set.
func (g *Global) write(ctx context.Context, snap snapshot, next state) error {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	started, start := g.now(), time.Now()
	rev, err := g.bucket().Update(opCtx, g.key, next.encode(g.p), snap.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		g.conflicts.Add(1)
		if _, err := g.refresh(ctx); err != nil {
			return err
		}
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("ratelimit: write state: %w", err)
	}
	g.observeLatency(time.Since(start))
	g.lastWrite.Store(started)
	g.store(snapshot{st: next, rev: rev, known: true}, false)
	return nil
}

// Ready blocks, without reserving anything, until the shared state says this
// process could be granted a call within horizon (counting the callers
// already waiting in this process). Use it before fetching work, so as not to
// hold messages that cannot be sent soon. It is a hint: Wait still decides.
// While this process is disconnected from NATS it blocks. If the key has no
// state yet it returns at once: the first Wait creates the state and waits
// out the cold-start delay.
func (g *Global) Ready(ctx context.Context, horizon time.Duration) error {
	for {
		if err := g.alive(ctx); err != nil {
			return err
		}
		g.mu.Lock()
		snap, pending, changed := g.cache, g.pending, g.changed
		g.mu.Unlock()
		if !snap.known || g.js.Conn().Status() != nats.CONNECTED {
			// Poll: connection state changes are not broadcast to us.
			if err := g.sleepOrChange(ctx, 100*time.Millisecond, changed); err != nil {
				return err
			}
			continue
		}
		if snap.absent || snap.invalid {
			// No state yet: only a Wait creates it (and pays the cold-start
			// delay). A cold state computed here from the moving clock
			// would never come within the horizon, and a worker that calls
			// Ready before its first Wait would never start.
			return nil
		}
		now := g.now()
		slot := snap.st.nthSlot(now, pending+1, g.p)
		if slot <= now+int64(horizon) {
			return nil
		}
		if err := g.sleepOrChange(ctx, time.Duration(slot-int64(horizon)-now), changed); err != nil {
			return err
		}
	}
}

// Throttled reports that the API rejected a call for exceeding its rate limit
// (RequestLimitExceeded*). It lowers the shared rate by Decrease, unless
// another report did so less than Holdoff ago. It gives up quietly (logging)
// if the shared state cannot be written before ctx ends or after a few
// conflicts.
func (g *Global) Throttled(ctx context.Context) {
	g.throttles.Add(1)
	for range 5 {
		if g.alive(ctx) != nil {
			return
		}
		err := g.withTurn(ctx, g.decrease)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil && g.alive(ctx) == nil {
			g.warn("throttle", "ratelimit: could not record a rate decrease", "err", err)
		}
		return
	}
}

func (g *Global) decrease(ctx context.Context) error {
	snap, err := g.current(ctx)
	if err != nil {
		return err
	}
	if snap.absent || snap.invalid {
		return nil // a cold state delays grants anyway
	}
	now := g.now()
	next := snap.st.clone()
	changed, from, to := next.throttle(now, g.p)
	if !changed {
		return nil
	}
	if err := g.write(ctx, snap, next); err != nil {
		return err
	}
	g.decreases.Add(1)
	g.log.Info("ratelimit: API throttled us; lowered the shared rate",
		"from", from, "to", to, "recovery", g.cfg.Recovery)
	return nil
}

// Rates returns the configured rate (Limit/Window) and the current shared
// adaptive rate, in calls per second. Grants are paced at no more than
// min(effective, Limit/(Window+Guard)).
func (g *Global) Rates() (configured, effective float64) {
	g.mu.Lock()
	snap := g.cache
	g.mu.Unlock()
	if !snap.known || snap.absent || snap.invalid {
		return g.p.maxRate, g.p.maxRate
	}
	return g.p.maxRate, snap.st.effectiveRate(g.now(), g.p)
}

// Stats returns counters of what this instance did.
func (g *Global) Stats() Stats {
	return Stats{
		Grants:      g.grants.Load(),
		Conflicts:   g.conflicts.Load(),
		Errors:      g.errs.Load(),
		Abandoned:   g.abandoned.Load(),
		Late:        g.late.Load(),
		Throttles:   g.throttles.Load(),
		Decreases:   g.decreases.Load(),
		ColdStarts:  g.coldStarts.Load(),
		ClockOffset: time.Duration(g.offset.Load()),
	}
}

// Close stops the watch goroutine and makes Wait and Ready return ErrClosed.
// Reservations already made stay in the shared log until they expire. It does
// not close the NATS connection.
func (g *Global) Close() error {
	g.closeOnce.Do(func() {
		close(g.closed)
		g.stopWatch()
		<-g.watchDone
	})
	return nil
}

// watch keeps the cache up to date from a KV watch on the key, restarting the
// watch after errors and when it has gone silent.
func (g *Global) watch(ctx context.Context) {
	defer close(g.watchDone)
	bo := newRetryBackoff()
	for {
		// Each watch gets its own context: cancelling it makes nats.go
		// unsubscribe (and delete the ephemeral consumer) in its own
		// goroutine. Stop would do that here, blocking Close for the
		// request timeout when the server is unreachable.
		wctx, stop := context.WithCancel(ctx)
		w, err := g.bucket().Watch(wctx, g.key)
		if err == nil {
			bo.Reset()
			err = g.follow(ctx, w)
		}
		stop()
		if ctx.Err() != nil {
			return
		}
		g.log.Debug("ratelimit: restarting the watch", "err", err)
		if g.sleep(ctx, bo.NextBackOff()) != nil {
			return
		}
		if err := g.bind(ctx); err != nil {
			g.errs.Add(1)
		}
	}
}

var (
	errWatchStale       = errors.New("ratelimit: watch delivered nothing after our write")
	errWatchReconnected = errors.New("ratelimit: reconnected to NATS")
)

func (g *Global) follow(ctx context.Context, w jetstream.KeyWatcher) error {
	check := time.NewTicker(watchCheckEvery)
	defer check.Stop()
	live := false // the first entries are the current value, not news
	g.lastWatch.Store(g.now())
	reconnects := g.js.Conn().Stats().Reconnects
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			// The watch's ordered consumer does not survive a server
			// restart; we cannot hook the connection's reconnect
			// callback (it belongs to the caller), so we poll.
			if g.js.Conn().Stats().Reconnects != reconnects {
				return errWatchReconnected
			}
			// Every write of ours must come back through the watch; if it
			// does not, the watch is dead (e.g. the bucket was recreated).
			lw := g.lastWrite.Load()
			if lw > g.lastWatch.Load() && g.now()-lw > int64(watchStaleAfter) {
				return errWatchStale
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("ratelimit: watch closed")
			}
			if e == nil {
				live = true
				continue
			}
			g.lastWatch.Store(g.now())
			if live {
				g.sampleClock(e.Created())
			}
			g.store(g.decodeEntry(e), false)
		}
	}
}

// decodeEntry turns a KV entry (from a watch or a read) into a snapshot.
func (g *Global) decodeEntry(e jetstream.KeyValueEntry) snapshot {
	if e.Operation() != jetstream.KeyValuePut {
		return snapshot{rev: e.Revision(), known: true, absent: true}
	}
	st, err := decodeState(e.Value())
	if err != nil {
		g.warn("decode", "ratelimit: unreadable shared state; it will be reset", "err", err)
		return snapshot{rev: e.Revision(), known: true, invalid: true}
	}
	if st.writerLimit != g.p.limit || st.writerSpan != g.p.span {
		g.warn("config", "ratelimit: another replica uses different settings for this key; the fleet is only as strict as the most permissive",
			"their_limit", st.writerLimit, "their_window_plus_guard", time.Duration(st.writerSpan),
			"our_limit", g.p.limit, "our_window_plus_guard", time.Duration(g.p.span))
	}
	return snapshot{st: st, rev: e.Revision(), known: true}
}

// current returns the cached snapshot, reading the key if the cache is not
// known to be usable.
func (g *Global) current(ctx context.Context) (snapshot, error) {
	g.mu.Lock()
	snap := g.cache
	g.mu.Unlock()
	if snap.known {
		return snap, nil
	}
	return g.refresh(ctx)
}

// refresh reads the key and replaces the cache with what it finds: a read is
// authoritative even if its revision is lower (the bucket may have been
// recreated).
func (g *Global) refresh(ctx context.Context) (snapshot, error) {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	e, err := g.bucket().Get(opCtx, g.key)
	var snap snapshot
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		snap = snapshot{known: true, absent: true}
	case err != nil:
		return snapshot{}, fmt.Errorf("ratelimit: read state: %w", err)
	default:
		snap = g.decodeEntry(e)
	}
	g.store(snap, true)
	return snap, nil
}

// store replaces the cache if snap is newer, or unconditionally if force.
func (g *Global) store(snap snapshot, force bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !force && g.cache.known && snap.rev <= g.cache.rev {
		return
	}
	g.cache = snap
	close(g.changed)
	g.changed = make(chan struct{})
}

// invalidate makes the next attempt read the key instead of trusting the cache.
func (g *Global) invalidate() {
	g.mu.Lock()
	g.cache.known = false
	g.mu.Unlock()
}

// bind (re)opens the bucket, creating it if it does not exist.
func (g *Global) bind(ctx context.Context) error {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := g.js.KeyValue(opCtx, g.cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = g.js.CreateKeyValue(opCtx, jetstream.KeyValueConfig{
			Bucket:      g.cfg.Bucket,
			Description: "omicsq rate limiter state: one key per quota",
			History:     1,
			Replicas:    g.cfg.Replicas,
			Storage:     jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another replica won the race
			kv, err = g.js.KeyValue(opCtx, g.cfg.Bucket)
		}
	}
	if err != nil {
		return fmt.Errorf("ratelimit: bind bucket %s: %w", g.cfg.Bucket, err)
	}
	g.mu.Lock()
	g.kv = kv
	g.mu.Unlock()
	return nil
}

func (g *Global) bucket() jetstream.KeyValue {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.kv
}

// withTurn runs f holding this process's turn to write the key. After a
// failure it counts the error and rebinds the bucket, in case it was deleted.
func (g *Global) withTurn(ctx context.Context, f func(context.Context) error) error {
	select {
	case g.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.closed:
		return ErrClosed
	}
	defer func() { <-g.turn }()
	err := f(ctx)
	if err != nil && !errors.Is(err, errConflict) && ctx.Err() == nil {
		g.errs.Add(1)
		if bindErr := g.bind(ctx); bindErr != nil {
			err = errors.Join(err, bindErr)
		}
	}
	return err
}

// pendingMark counts one Wait call in g.pending while it needs a slot.
type pendingMark struct {
	g  *Global
	on bool
}

func (m *pendingMark) set(on bool) {
	if m.on == on {
		return
	}
	m.on = on
	m.g.mu.Lock()
	defer m.g.mu.Unlock()
	if on {
		m.g.pending++
	} else {
		m.g.pending--
	}
}

func (g *Global) now() int64 { return g.cfg.Now().UnixNano() }

// lead is how far ahead of now an idle reservation is placed, so that the
// caller is not too late when the write returns: a caller up to Guard/2 late
// may still call, so only writes slower than about Guard/8 need a lead (a
// slow link to NATS); on a fast one an idle grant costs one round trip.
func (g *Global) lead() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return min(max(2*g.latency-g.cfg.Guard/4, 0), g.cfg.Horizon/2)
}

func (g *Global) observeLatency(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.latency == 0 {
		g.latency = d
		return
	}
	g.latency += (d - g.latency) / 8
}

// jitter spreads retries of a slot over a small fraction of the pacing gap.
func (g *Global) jitter() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rand.Int64N(int64(min(5*time.Millisecond, g.cfg.Guard/4)) + 1)
}

// sampleClock estimates local minus server clock from the server timestamp of
// a freshly watched update. Delivery latency only adds to the difference, so
// the smallest of a batch is the best estimate.
func (g *Global) sampleClock(server time.Time) {
	d := g.cfg.Now().Sub(server)
	g.mu.Lock()
	if g.skewCount == 0 || d < g.skewMin {
		g.skewMin = d
	}
	g.skewCount++
	if g.skewCount < skewSamples {
		g.mu.Unlock()
		return
	}
	est := g.skewMin
	g.skewCount = 0
	g.mu.Unlock()
	g.offset.Store(int64(est))
	if est > g.cfg.Guard/2 || est < -g.cfg.Guard/2 {
		g.warn("clock", "ratelimit: local clock differs from the NATS server's by more than Guard/2; check NTP, the rate bound assumes agreeing clocks",
			"offset", est, "guard", g.cfg.Guard)
	}
}

// warn logs at most once per warnEvery for each topic.
func (g *Global) warn(topic, msg string, args ...any) {
	now := time.Now()
	g.mu.Lock()
	last, seen := g.warned[topic]
	if seen && now.Sub(last) < warnEvery {
		g.mu.Unlock()
		return
	}
	g.warned[topic] = now
	g.mu.Unlock()
	g.log.Warn(msg, args...)
}

func (g *Global) alive(ctx context.Context) error {
	select {
	case <-g.closed:
		return ErrClosed
	default:
		return ctx.Err()
	}
}

// sleepUntil sleeps until the wall-clock time t (unix ns).
func (g *Global) sleepUntil(ctx context.Context, t int64) error {
	return g.sleep(ctx, time.Duration(t-g.now()))
}

func (g *Global) sleep(ctx context.Context, d time.Duration) error {
	return g.sleepOrChange(ctx, d, nil)
}

// sleepOrChange sleeps for d, or until changed is closed (nil: never).
func (g *Global) sleepOrChange(ctx context.Context, d time.Duration, changed <-chan struct{}) error {
	if d <= 0 {
		return g.alive(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-changed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-g.closed:
		return ErrClosed
	}
}

// newRetryBackoff paces retries after NATS errors: fast at first (a brief
// hiccup), then every 2s at most, forever (the caller's ctx bounds it).
func newRetryBackoff() *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(20*time.Millisecond),
		backoff.WithMaxInterval(2*time.Second),
		backoff.WithMaxElapsedTime(0),
	)
}
