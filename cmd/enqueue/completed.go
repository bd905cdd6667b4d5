package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/operate"
)

// liveEvery is how often --wait=completed prints its running summary.
const liveEvery = 10 * time.Second

// waitFor runs --wait: until every request is submitted or dead-lettered,
// and with --wait=completed until every run group is terminal, all within
// --timeout of the end of publishing.
func waitFor(ctx context.Context, cl *client.Client, c *config, items []item, acks []client.Published, dlqMark uint64, stdout, stderr io.Writer) int {
	wctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	code, submitted := waitOutcomes(wctx, cl, items, acks, dlqMark, c.timeout, stdout, stderr, c.quiet)
	if c.wait != waitCompleted || len(submitted) == 0 || code == exitTimeout || code == exitInterrupted {
		return code
	}
	if runs := waitRuns(wctx, cl, items, submitted, c.timeout, stdout, stderr, c.quiet); runs != exitOK && code == exitOK {
		return runs
	}
	return code
}

// runTally counts run groups by phase for --wait=completed.
type runTally struct {
	phase map[string]client.Phase
	n     map[client.Phase]int
}

func (t *runTally) set(key string, p client.Phase) {
	t.n[t.phase[key]]--
	t.phase[key] = p
	t.n[p]++
}

func (t *runTally) line() string {
	return fmt.Sprintf("%d submitted, %d running, %d succeeded, %d failed",
		t.n[client.PhaseSubmitted], t.n[client.PhaseRunning], t.n[client.PhaseSucceeded], t.n[client.PhaseFailed])
}

// waitRuns follows the submitted keys' run groups to a terminal status,
// printing one line per request when its group ends (failures with the
// API's error message) and a running summary, and returns 1 if any failed,
// 2 (130 if interrupted) if any had not finished, else 0.
func waitRuns(ctx context.Context, cl *client.Client, items []item, keys []string, timeout time.Duration, stdout, stderr io.Writer, quiet bool) int {
	w, err := cl.WatchStatus(ctx, keys)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	defer w.Stop()
	locs := map[string][]location{}
	for _, it := range items {
		locs[it.Key] = append(locs[it.Key], it.Loc)
	}
	t := runTally{phase: map[string]client.Phase{}, n: map[client.Phase]int{}}
	for _, k := range keys {
		t.set(k, client.PhaseSubmitted)
	}
	tick := time.NewTicker(liveEvery)
	defer tick.Stop()
	for events := w.Events(); events != nil; {
		select {
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			st := client.RequestState{Key: e.Key, Status: &e}
			t.set(e.Key, st.Phase())
			if e.Terminal {
				printRunEnd(stdout, locs[e.Key], e, quiet)
			}
		case <-tick.C:
			fmt.Fprintf(stderr, "enqueue: runs: %s\n", t.line())
		}
	}
	open := len(keys) - t.n[client.PhaseSucceeded] - t.n[client.PhaseFailed]
	summary := "enqueue: runs: " + t.line()
	switch {
	case open > 0 && errors.Is(ctx.Err(), context.Canceled):
		summary += fmt.Sprintf(", %d not finished (interrupted)", open)
	case open > 0:
		summary += fmt.Sprintf(", %d not finished after %v", open, timeout)
	}
	fmt.Fprintln(stderr, summary)
	switch {
	case t.n[client.PhaseFailed] > 0:
		return exitFailed
	case open > 0 && errors.Is(ctx.Err(), context.Canceled):
		return exitInterrupted
	case open > 0:
		return exitTimeout
	}
	return exitOK
}

func printRunEnd(stdout io.Writer, locs []location, e client.StatusEvent, quiet bool) {
	for _, loc := range locs {
		if client.IsFailedStatus(e.Status) {
			fmt.Fprintf(stdout, "%s %s run-failed %s %s: %s\n", loc, e.Key, operate.Printable(e.RunGroupID),
				operate.Printable(e.Status), operate.Printable(e.ErrorMessage))
		} else if !quiet {
			fmt.Fprintf(stdout, "%s %s run-succeeded %s\n", loc, e.Key, operate.Printable(e.RunGroupID))
		}
	}
}
