package console

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// deadLetterRow is what the index keeps of one dead letter: the summary an
// operator filters by, never the request (inspecting one reads it from the
// stream), so 100,000 of them take tens of megabytes, not gigabytes.
type deadLetterRow struct {
	client.DeadLetterSummary
	Batch string // the request's batch, from the Omicsq-Batch header
}

// DLQFilter selects rows of the index; zero fields match everything.
type DLQFilter struct {
	Reason, Code, Batch string
	// Key matches one key exactly.
	Key      string
	From, To time.Time
}

func (f DLQFilter) match(r *deadLetterRow) bool {
	return (f.Reason == "" || string(r.Reason) == f.Reason) && (f.Code == "" || r.Code == f.Code) &&
		(f.Batch == "" || r.Batch == f.Batch) && (f.Key == "" || r.Key == f.Key) &&
		(f.From.IsZero() || !r.FailedAt.Before(f.From)) && (f.To.IsZero() || r.FailedAt.Before(f.To))
}

// Page is one page of a query, newest first.
type Page struct {
	Rows []deadLetterRow
	// Matched counts every row the filter selects; Total every row.
	Matched, Total int
	// Ready is false until the first full read of the stream is done.
	Ready bool
}

// Index follows the dead-letter stream into memory so that the console
// filters 100,000 dead letters server-side without reading the stream per
// query. Deletions (a redrive by the CLI, the stream's age limit) do not
// reach an ordered consumer: when the stream's message count and the
// index's disagree, the index is rebuilt from the stream in the background
// while the old one keeps answering.
type Index struct {
	js     jetstream.JetStream
	stream string
	prefix string
	log    *slog.Logger

	mu      sync.RWMutex
	rows    []deadLetterRow // ascending sequence
	ready   bool
	reasons map[string]int
	// pending holds what Remove dropped while a new generation was being
	// read (nil otherwise): the generation may have read them before they
	// were deleted, and must not bring them back.
	pending map[uint64]bool
}

// NewIndex returns an index of the dead-letter stream; Run fills it.
func NewIndex(js jetstream.JetStream, t client.Topology, log *slog.Logger) *Index {
	return &Index{js: js, stream: t.DLQStream, prefix: t.DLQPrefix, log: log}
}

// Run follows the stream until ctx ends, rebuilding on drift.
func (x *Index) Run(ctx context.Context, checkEvery time.Duration) {
	for ctx.Err() == nil {
		gen := &generation{}
		x.mu.Lock()
		x.pending = map[uint64]bool{}
		x.mu.Unlock()
		cc, err := x.follow(ctx, gen)
		if err == nil {
			err = x.watchDrift(ctx, gen, checkEvery)
			cc.Stop()
		}
		if err != nil && ctx.Err() == nil {
			x.log.Warn("dead-letter index: following the stream failed; reading it again", "error", err)
			_ = sleepCtx(ctx, time.Second)
		}
	}
}

// generation is one full read of the stream, swapped in once caught up.
type generation struct {
	mu     sync.Mutex
	rows   []deadLetterRow
	live   bool // swapped in: appends go to the index
	caught chan struct{}
}

func (x *Index) follow(ctx context.Context, gen *generation) (jetstream.ConsumeContext, error) {
	s, err := x.js.Stream(ctx, x.stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	gen.caught = make(chan struct{})
	if info.State.Msgs == 0 {
		x.swap(gen)
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{x.prefix + ".>"}})
	if err != nil {
		return nil, err
	}
	return cons.Consume(func(m jetstream.Msg) {
		d, err := client.DeadLetterFromMsg(m)
		if err != nil {
			return
		}
		row := deadLetterRow{DeadLetterSummary: d.Summary(), Batch: d.Header.Get(headerBatch)}
		md, _ := m.Metadata()
		gen.mu.Lock()
		live := gen.live
		if !live {
			gen.rows = append(gen.rows, row)
		}
		gen.mu.Unlock()
		if live {
			x.add(row)
		} else if d.Sequence >= last || (md != nil && md.NumPending == 0) {
			x.swap(gen)
		}
	})
}

// headerBatch is the batch header of the message contract.
const headerBatch = "Omicsq-Batch"

func (x *Index) swap(gen *generation) {
	gen.mu.Lock()
	defer gen.mu.Unlock()
	if gen.live {
		return
	}
	gen.live = true
	x.mu.Lock()
	rows := gen.rows[:0]
	for _, r := range gen.rows {
		if !x.pending[r.Seq] {
			rows = append(rows, r)
		}
	}
	x.rows, x.ready, x.pending = rows, true, nil
	x.recount()
	x.mu.Unlock()
	gen.rows = nil
	close(gen.caught)
}

func (x *Index) add(r deadLetterRow) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if n := len(x.rows); n > 0 && x.rows[n-1].Seq >= r.Seq {
		return // redelivered by a consumer reset
	}
	x.rows = append(x.rows, r)
	x.reasons[string(r.Reason)]++
}

// Remove drops seqs (deleted by the console's own redrive) at once, in
// one pass however many there are.
func (x *Index) Remove(seqs ...uint64) {
	if len(seqs) == 0 {
		return
	}
	drop := make(map[uint64]bool, len(seqs))
	for _, seq := range seqs {
		drop[seq] = true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.pending != nil {
		for seq := range drop {
			x.pending[seq] = true
		}
	}
	x.keep(func(r *deadLetterRow) bool { return !drop[r.Seq] })
}

// keep drops the rows keep rejects and recounts; x.mu must be held.
func (x *Index) keep(keep func(*deadLetterRow) bool) {
	rows := x.rows[:0]
	for i := range x.rows {
		if keep(&x.rows[i]) {
			rows = append(rows, x.rows[i])
		}
	}
	clear(x.rows[len(rows):]) // let the dropped rows' strings go
	x.rows = rows
	x.recount()
}

// recount recomputes the counts by reason; x.mu must be held.
func (x *Index) recount() {
	x.reasons = map[string]int{}
	for _, r := range x.rows {
		x.reasons[string(r.Reason)]++
	}
}

// watchDrift keeps the index in step with deletions it cannot see: every
// check, rows below the stream's first sequence (aged out) and the
// stream's interior deletes (redriven by the CLI) are dropped. Only when
// the counts still disagree twice in a row (one check may race an append)
// does it return, to rebuild. A first read that makes no progress for a
// minute is started again.
func (x *Index) watchDrift(ctx context.Context, gen *generation, every time.Duration) error {
	for read := -1; ; {
		select {
		case <-gen.caught:
		case <-ctx.Done():
			return nil
		case <-time.After(time.Minute):
			gen.mu.Lock()
			n := len(gen.rows)
			gen.mu.Unlock()
			if n == read {
				return nil // stalled: what it waited for was deleted meanwhile
			}
			read = n
			continue
		}
		break
	}
	drifted := 0
	for sleepCtx(ctx, every) == nil {
		s, err := x.js.Stream(ctx, x.stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if x.size() != info.State.Msgs {
			if info, err = s.Info(ctx, jetstream.WithDeletedDetails(true)); err != nil {
				return err
			}
			deleted := make(map[uint64]bool, len(info.State.Deleted))
			for _, seq := range info.State.Deleted {
				deleted[seq] = true
			}
			first := info.State.FirstSeq
			x.mu.Lock()
			x.keep(func(r *deadLetterRow) bool { return r.Seq >= first && !deleted[r.Seq] })
			x.mu.Unlock()
		}
		if x.size() == info.State.Msgs {
			drifted = 0
			continue
		}
		if drifted++; drifted >= 2 {
			x.log.Info("dead-letter index: the stream changed under it; rebuilding")
			return nil
		}
	}
	return nil
}

func (x *Index) size() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return uint64(len(x.rows))
}

// Query returns page (0-based) of size rows matching f, newest first.
func (x *Index) Query(f DLQFilter, page, size int) Page {
	x.mu.RLock()
	defer x.mu.RUnlock()
	p := Page{Total: len(x.rows), Ready: x.ready}
	skip := page * size
	for i := len(x.rows) - 1; i >= 0; i-- {
		r := &x.rows[i]
		if !f.match(r) {
			continue
		}
		if p.Matched >= skip && len(p.Rows) < size {
			p.Rows = append(p.Rows, *r)
		}
		p.Matched++
	}
	return p
}

// Select returns the sequences of every row matching f, ascending.
func (x *Index) Select(f DLQFilter) []uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var seqs []uint64
	for i := range x.rows {
		if f.match(&x.rows[i]) {
			seqs = append(seqs, x.rows[i].Seq)
		}
	}
	return seqs
}

// Reasons counts the rows by dead-letter reason.
func (x *Index) Reasons() map[string]int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make(map[string]int, len(x.reasons))
	for k, v := range x.reasons {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

// Row returns the row of seq.
func (x *Index) Row(seq uint64) (deadLetterRow, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	i, ok := slices.BinarySearchFunc(x.rows, seq, func(r deadLetterRow, s uint64) int { return cmp.Compare(r.Seq, s) })
	if !ok {
		return deadLetterRow{}, false
	}
	return x.rows[i], true
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// printable keeps s to one line of printable text for a page.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
