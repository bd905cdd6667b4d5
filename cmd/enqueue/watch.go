package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/operate"
)

// publishAll publishes items in order, progressEvery at a time (the client
// keeps a window of them in flight), printing each acknowledgement. It
// stops at the first failure.
func publishAll(ctx context.Context, cl *client.Client, c *config, items []item, stdout, stderr io.Writer) (acks []client.Published, dups int, err error) {
	for start := 0; start < len(items); start += progressEvery {
		chunk := items[start:min(start+progressEvery, len(items))]
		reqs := make([]client.Request, len(chunk))
		for i, it := range chunk {
			reqs[i] = client.Request{Key: it.Key, Body: it.Body, Batch: c.batch, FairnessKey: cmp.Or(it.FairnessKey, c.fairnessKey)}
			if p := cmp.Or(string(it.Priority), c.priority); p != "" {
				reqs[i].Priority, _ = client.ParsePriority(p) // checked with the flags
			}
		}
		got, err := cl.PublishBatch(ctx, reqs)
		for i, p := range got {
			status := "published"
			if p.Duplicate {
				status, dups = "duplicate", dups+1
			}
			if !c.quiet {
				fmt.Fprintf(stdout, "%s %s %s\n", chunk[i].Loc, p.Key, status)
			}
		}
		acks = append(acks, got...)
		if be, ok := errors.AsType[*client.BatchError](err); ok {
			loc := chunk[be.Index].Loc
			if errors.Is(err, client.ErrNoStream) {
				return acks, dups, fmt.Errorf("%s: no stream stores subject %s: check --subject (is a worker running? it creates the streams)", loc, c.Topo.RequestsSubject)
			}
			return acks, dups, fmt.Errorf("%s: %w", loc, be.Err)
		}
		if err != nil {
			return acks, dups, err
		}
		if n := len(acks); !c.quiet && len(items) > progressEvery {
			fmt.Fprintf(stderr, "enqueue: published %d of %d\n", n, len(items))
		}
	}
	return acks, dups, nil
}

// waitTally counts the outcomes of a --wait.
type waitTally struct{ ok, dead, unreadable, pending int }

// waitOutcomes prints one line per request as it settles, then a summary,
// and returns the exit status: 1 if any request was dead-lettered (or its
// result is unreadable), else 130 if interrupted or 2 if any is still
// pending at the timeout, else 0.
// submitted lists the keys that got a result. ctx carries the deadline.
func waitOutcomes(ctx context.Context, cl *client.Client, items []item, acks []client.Published, dlqMark uint64, timeout time.Duration, stdout, stderr io.Writer, quiet bool) (code int, submitted []string) {
	w, err := cl.Watch(ctx, acks, client.DeadLettersAfter(dlqMark))
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed, nil
	}
	defer w.Stop()
	pending, order := map[string][]location{}, []string{}
	for _, it := range items {
		if _, ok := pending[it.Key]; !ok {
			order = append(order, it.Key)
		}
		pending[it.Key] = append(pending[it.Key], it.Loc)
	}
	earlier := map[string]uint64{}
	var t waitTally
	for o := range w.Outcomes() {
		if o.Earlier {
			earlier[o.Key] = o.Sequence
			continue
		}
		for _, loc := range pending[o.Key] {
			t.print(stdout, loc, o, quiet)
		}
		if o.Result != nil {
			submitted = append(submitted, o.Key)
		}
		delete(pending, o.Key)
	}
	for _, key := range order {
		for _, loc := range pending[key] {
			t.pending++
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
	return t.summary(stderr, errors.Is(ctx.Err(), context.Canceled), timeout), submitted
}

func (t *waitTally) print(stdout io.Writer, loc location, o client.Outcome, quiet bool) {
	switch {
	case o.Dead:
		t.dead++
		code, message := o.Code(), string(o.Reason())
		if o.DeadLetter != nil && o.DeadLetter.Error.Message != "" {
			message = o.DeadLetter.Error.Message
		}
		if code == "" {
			code = "unknown"
		}
		fmt.Fprintf(stdout, "%s %s dead-letter %s: %s\n", loc, o.Key, operate.Printable(code), operate.Printable(message))
	case o.Result == nil:
		t.unreadable++
		fmt.Fprintf(stdout, "%s %s result-unreadable (stream sequence %d)\n", loc, o.Key, o.Sequence)
	default:
		t.ok++
		if !quiet {
			fmt.Fprintf(stdout, "%s %s run-group %s\n", loc, o.Key, operate.Printable(o.Result.RunGroupID))
		}
	}
}

func (t *waitTally) summary(stderr io.Writer, interrupted bool, timeout time.Duration) int {
	summary := fmt.Sprintf("enqueue: wait: %d succeeded, %d dead-lettered", t.ok, t.dead)
	if t.unreadable > 0 {
		summary += fmt.Sprintf(", %d unreadable results", t.unreadable)
	}
	if t.pending > 0 {
		if interrupted {
			summary += fmt.Sprintf(", %d pending (interrupted)", t.pending)
		} else {
			summary += fmt.Sprintf(", %d pending after %v", t.pending, timeout)
		}
	}
	fmt.Fprintln(stderr, summary)
	switch {
	case t.dead > 0 || t.unreadable > 0:
		return exitFailed
	case t.pending > 0 && interrupted:
		return exitInterrupted
	case t.pending > 0:
		return exitTimeout
	}
	return exitOK
}
