package main

import (
	"context"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/queue"
)

// outcome is what the results or dead-letter stream says about a key.
type outcome struct {
	key string
	// dead is true for a dead letter, false for a result.
	dead bool
	// runGroup is the result's RunGroupId ("" if unreadable).
	runGroup string
	// code and message describe a dead letter.
	code, message string
	seq           uint64
	// earlier marks a dead letter stored before this run started: it does
	// not resolve the key, it is only mentioned if the wait times out.
	earlier bool
}

// watch follows the results and dead-letter streams for the keys of one
// run. It starts before anything is published, so no outcome is missed.
type watch struct {
	topo     queue.Topology
	results  jetstream.Stream
	dlq      jetstream.Stream
	dlqStart uint64            // last DLQ sequence before this run
	tokens   map[string]string // subject token -> key
	pending  map[string][]location
	order    []string // keys in input order
	events   chan outcome
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	ccs      []jetstream.ConsumeContext
}

// startWatch creates ordered consumers on <results prefix>.> and
// <dlq prefix>.> that start right after each stream's last message at this
// moment (DeliverNew, with no gap between creating them and publishing).
func startWatch(ctx context.Context, js jetstream.JetStream, t queue.Topology, items []item) (*watch, error) {
	results, err := requireStream(ctx, js, t.ResultsStream)
	if err != nil {
		return nil, err
	}
	dlq, err := requireStream(ctx, js, t.DLQStream)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	w := &watch{topo: t, results: results, dlq: dlq, tokens: map[string]string{},
		pending: map[string][]location{}, events: make(chan outcome, 256), cancel: cancel}
	for _, it := range items {
		if _, ok := w.pending[it.Key]; !ok {
			w.order = append(w.order, it.Key)
			w.tokens[client.KeyToken(it.Key)] = it.Key
		}
		w.pending[it.Key] = append(w.pending[it.Key], it.Loc)
	}
	for _, s := range []struct {
		stream jetstream.Stream
		prefix string
		dead   bool
	}{{results, t.ResultsPrefix, false}, {dlq, t.DLQPrefix, true}} {
		info, err := s.stream.Info(ctx)
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("stream %s: %w", s.stream.CachedInfo().Config.Name, err)
		}
		if s.dead {
			w.dlqStart = info.State.LastSeq
		}
		cons, err := s.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{s.prefix + ".>"},
			DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:    info.State.LastSeq + 1,
		})
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("watch %s: %w", info.Config.Name, err)
		}
		dead, prefix := s.dead, s.prefix
		cc, err := cons.Consume(func(m jetstream.Msg) {
			md, err := m.Metadata()
			if err != nil {
				return
			}
			key, ok := w.tokens[strings.TrimPrefix(m.Subject(), prefix+".")]
			if !ok {
				return // another run's request
			}
			w.send(wctx, decodeOutcome(key, dead, md.Sequence.Stream, m.Data(), m.Headers().Get))
		})
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("watch %s: %w", info.Config.Name, err)
		}
		w.mu.Lock()
		w.ccs = append(w.ccs, cc)
		w.mu.Unlock()
	}
	return w, nil
}

func (w *watch) send(ctx context.Context, o outcome) {
	select {
	case w.events <- o:
	case <-ctx.Done():
	}
}

func (w *watch) stop() {
	w.cancel()
	w.mu.Lock()
	for _, cc := range w.ccs {
		cc.Stop()
	}
	w.ccs = nil
	w.mu.Unlock()
	w.wg.Wait()
}

// decodeOutcome reads a result or dead-letter message; get reads headers.
func decodeOutcome(key string, dead bool, seq uint64, data []byte, get func(string) string) outcome {
	o := outcome{key: key, dead: dead, seq: seq}
	if !dead {
		if r, err := client.DecodeResult(data); err == nil {
			o.runGroup = r.RunGroupID
		}
		return o
	}
	if d, err := client.DecodeDeadLetter(data); err == nil {
		o.code, o.message = d.Error.Code, d.Error.Message
		if o.message == "" {
			o.message = string(d.Reason)
		}
	} else {
		o.code, o.message = get(client.HeaderErrorCode), get(client.HeaderReason)
	}
	if o.code == "" {
		o.code = "unknown"
	}
	return o
}

// lookupExisting catches outcomes stored before the consumers started
// (a re-run of requests that already have results): a direct get of each
// key's last result and dead letter.
func (w *watch) lookupExisting(ctx context.Context) {
	keys := make(chan string)
	const workers = 4
	for range workers {
		w.wg.Go(func() {
			for key := range keys {
				if m, err := w.results.GetLastMsgForSubject(ctx, w.topo.ResultSubject(key)); err == nil {
					w.send(ctx, decodeOutcome(key, false, m.Sequence, m.Data, m.Header.Get))
					continue
				}
				m, err := w.dlq.GetLastMsgForSubject(ctx, w.topo.DLQSubject(key))
				if err != nil {
					continue
				}
				o := decodeOutcome(key, true, m.Sequence, m.Data, m.Header.Get)
				o.earlier = m.Sequence <= w.dlqStart
				w.send(ctx, o)
			}
		})
	}
	w.wg.Go(func() {
		defer close(keys)
		for _, k := range w.order {
			select {
			case keys <- k:
			case <-ctx.Done():
				return
			}
		}
	})
}

// wait prints one line per request as it resolves, then a summary, and
// returns the exit status: 1 if any request was dead-lettered (or its
// result is unreadable), else 2 if any is still pending at the timeout,
// else 0.
func (w *watch) wait(ctx context.Context, timeout time.Duration, stdout, stderr io.Writer, quiet bool) int {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lctx, lcancel := context.WithCancel(wctx)
	defer lcancel()
	w.lookupExisting(lctx)
	earlier := map[string]uint64{}
	var ok, dead, unreadable int
	for len(w.pending) > 0 {
		var o outcome
		select {
		case o = <-w.events:
		case <-wctx.Done():
		}
		if o.key == "" {
			break // timed out or interrupted
		}
		locs, open := w.pending[o.key]
		if !open {
			continue
		}
		if o.earlier {
			earlier[o.key] = o.seq
			continue
		}
		delete(w.pending, o.key)
		for _, loc := range locs {
			switch {
			case o.dead:
				dead++
				fmt.Fprintf(stdout, "%s %s dead-letter %s: %s\n", loc, o.key, printable(o.code), printable(o.message))
			case o.runGroup == "":
				unreadable++
				fmt.Fprintf(stdout, "%s %s result-unreadable (stream sequence %d)\n", loc, o.key, o.seq)
			default:
				ok++
				if !quiet {
					fmt.Fprintf(stdout, "%s %s run-group %s\n", loc, o.key, printable(o.runGroup))
				}
			}
		}
	}
	pending := 0
	for _, key := range w.order {
		for _, loc := range w.pending[key] {
			pending++
			if quiet {
				continue
			}
			if seq, ok := earlier[key]; ok {
				fmt.Fprintf(stdout, "%s %s pending (a dead letter from before this run exists: enqueue dlq show %d)\n", loc, key, seq)
			} else {
				fmt.Fprintf(stdout, "%s %s pending\n", loc, key)
			}
		}
	}
	summary := fmt.Sprintf("enqueue: wait: %d succeeded, %d dead-lettered", ok, dead)
	if unreadable > 0 {
		summary += fmt.Sprintf(", %d unreadable results", unreadable)
	}
	if pending > 0 {
		if ctx.Err() != nil {
			summary += fmt.Sprintf(", %d pending (interrupted)", pending)
		} else {
			summary += fmt.Sprintf(", %d pending after %v", pending, timeout)
		}
	}
	fmt.Fprintln(stderr, summary)
	switch {
	case dead > 0 || unreadable > 0:
		return exitFailed
	case pending > 0 && ctx.Err() != nil:
		return exitInterrupted
	case pending > 0:
		return exitTimeout
	}
	return exitOK
}

// printable replaces control characters in text from the streams, so a
// message cannot drive the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
}
