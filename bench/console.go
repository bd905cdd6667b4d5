package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/console"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/submit"
)

// The console benchmark is issue 15's speed acceptance: with 100,000 dead
// letters the DLQ page answers a filtered query in under a second. The dead
// letters are real messages of the dead-letter stream (the contract's
// subjects, headers and bodies); the console runs in this process over
// real HTTP with its token, indexes the stream, and the queries are timed
// end to end as a browser's fetch of /api/dlq would be.

type consoleConfig struct {
	DeadLetters int
	Reps        int
}

func (c *consoleConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.DeadLetters, "dead-letters", 100000, "dead letters stored before the console starts")
	fs.IntVar(&c.Reps, "reps", 30, "timed repetitions of each query")
}

// consoleReasons and consoleCodes spread the dead letters the way a bad
// week does: most of one reason, a long tail of codes.
var (
	consoleReasons = []client.DeadLetterReason{client.ReasonPermanentError, client.ReasonPermanentError, client.ReasonPermanentError,
		client.ReasonRetriesExhausted, client.ReasonIdentityChanged}
	consoleCodes = []string{"InvalidParameterValue.InvalidInputJsonFormat", "InvalidParameterValue.InvalidName",
		"MissingParameter", "ResourceNotFound.ApplicationNotExist", "InvalidParameterValue.InvalidCosKey",
		"InternalError", "RequestLimitExceeded", "InvalidParameterValue.InvalidRunOption", "FailedOperation", "InvalidParameter"}
)

const consoleToken = "bench-console-token-0123456789"

func runConsole(ctx context.Context, h *harness, c consoleConfig) (string, error) {
	e, err := h.newEnv(ctx, "console", envOptions{})
	if err != nil {
		return "", err
	}
	defer e.close()
	t0 := time.Now()
	start := time.Now().Add(-7 * 24 * time.Hour)
	if err := seedDeadLetters(ctx, e, c.DeadLetters, start); err != nil {
		return "", err
	}
	h.logf("console: %d dead letters stored in %v", c.DeadLetters, time.Since(t0).Round(time.Millisecond))

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	log := slog.New(slog.DiscardHandler)
	index := console.NewIndex(e.js, e.topo.Topology, log)
	srv, err := console.New(console.Config{JS: e.js, Client: client.New(e.js, client.WithTopology(e.topo.Topology)), Topology: e.topo,
		Limits: submit.DefaultLimits(), RateLimitBucket: ratelimit.DefaultBucket, Index: index, Auth: console.Auth{Token: consoleToken}, Log: log})
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	indexStart := time.Now()
	wg.Go(func() { index.Run(cctx, 10*time.Second) })
	wg.Go(func() { _ = srv.Serve(cctx, ln) })
	base := "http://" + ln.Addr().String()
	var indexed time.Duration
	for {
		p := index.Query(console.DLQFilter{}, 0, 0)
		if p.Ready && p.Total == c.DeadLetters {
			indexed = time.Since(indexStart)
			break
		}
		if time.Since(indexStart) > 5*time.Minute || ctx.Err() != nil {
			return "", fmt.Errorf("the index holds %d of %d dead letters after %v", p.Total, c.DeadLetters, time.Since(indexStart))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc-min(before.HeapAlloc, after.HeapAlloc)) / (1 << 20)
	h.logf("console: indexed in %v, heap +%.0f MiB", indexed.Round(time.Millisecond), heap)

	day := start.Add(3 * 24 * time.Hour).UTC()
	queries := []struct{ name, query string }{
		{"no filter, first page", ""},
		{"no filter, page 1,000 (rows 50,000–50,049)", "page=1000"},
		{"reason (retries_exhausted, ~20%)", "reason=retries_exhausted"},
		{"error code (InternalError, ~10%)", "code=InternalError"},
		{"batch (1 of 200, ~0.5%)", "batch=sheet-0077"},
		{"one day (~14%)", "from=" + url.QueryEscape(day.Format(time.RFC3339)) + "&to=" + url.QueryEscape(day.Add(24*time.Hour).Format(time.RFC3339))},
		{"reason + code + day (~0.4%)", "reason=permanent_error&code=MissingParameter&from=" + url.QueryEscape(day.Format(time.RFC3339)) + "&to=" + url.QueryEscape(day.Add(24*time.Hour).Format(time.RFC3339))},
		{"one key", fmt.Sprintf("key=sample-%06d", c.DeadLetters*7/9)},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Console: filtered DLQ queries over %d dead letters\n\n", c.DeadLetters)
	fmt.Fprintf(&b, "The console indexes the dead-letter stream at start (%d dead letters in %v; the heap grew by %.0f MiB), "+
		"then every query is answered from memory. Each query is `GET /api/dlq?…` over loopback HTTP with the bearer token "+
		"(a page of 50 rows as JSON, the match count included), %d times.\n\n", c.DeadLetters, indexed.Round(time.Millisecond), heap, c.Reps)
	b.WriteString("| query | matched | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n")
	hc := &http.Client{Timeout: 10 * time.Second}
	worst := time.Duration(0)
	matches := make([]int, len(queries))
	for qi, q := range queries {
		var took []time.Duration
		matched := 0
		for range c.Reps {
			t := time.Now()
			m, err := consoleQuery(ctx, hc, base+"/api/dlq?"+q.query)
			if err != nil {
				return "", fmt.Errorf("%s: %w", q.name, err)
			}
			took = append(took, time.Since(t))
			matched = m
		}
		matches[qi] = matched
		slices.Sort(took)
		worst = max(worst, took[len(took)-1])
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", q.name, matched, ms(took[len(took)/2]), ms(took[len(took)*99/100]), ms(took[len(took)-1]))
	}
	// The page an operator sees: the same hardest filter rendered as HTML.
	var took []time.Duration
	for range c.Reps {
		t := time.Now()
		if err := consolePage(ctx, hc, base+"/dlq?"+queries[6].query); err != nil {
			return "", fmt.Errorf("DLQ page: %w", err)
		}
		took = append(took, time.Since(t))
	}
	slices.Sort(took)
	worst = max(worst, took[len(took)-1])
	fmt.Fprintf(&b, "| the HTML page `/dlq`, reason + code + day | %d | %s | %s | %s |\n", matches[6], ms(took[len(took)/2]), ms(took[len(took)*99/100]), ms(took[len(took)-1]))
	verdict := "holds"
	if worst >= time.Second {
		verdict = "does NOT hold"
	}
	fmt.Fprintf(&b, "\nThe slowest query took %s: the 1 s goal %s.\n\n", ms(worst), verdict)
	return b.String(), nil
}

func consoleQuery(ctx context.Context, hc *http.Client, u string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+consoleToken)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	var r struct {
		Matched int `json:"matched"`
	}
	return r.Matched, json.Unmarshal(body, &r)
}

func consolePage(ctx context.Context, hc *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth("bench", consoleToken)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `id="deadletters"`) {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// seedDeadLetters publishes n dead letters spread over a week from start,
// asynchronously with a bounded window.
func seedDeadLetters(ctx context.Context, e *env, n int, start time.Time) error {
	step := 7 * 24 * time.Hour / time.Duration(n)
	for i := range n {
		key := fmt.Sprintf("sample-%06d", i)
		d := client.DeadLetter{Key: key, Request: requestBody(key), Reason: consoleReasons[i%len(consoleReasons)],
			Error:    client.Failure{Class: "permanent", Code: consoleCodes[i%len(consoleCodes)], Message: "bench"},
			FailedAt: start.Add(time.Duration(i) * step), Attempts: 1, Deliveries: 1}
		data, err := json.Marshal(d)
		if err != nil {
			return err
		}
		m := nats.NewMsg(e.topo.DLQSubject(key))
		m.Data = data
		m.Header.Set(client.HeaderKey, key)
		m.Header.Set(client.HeaderReason, string(d.Reason))
		m.Header.Set(client.HeaderErrorCode, d.Error.Code)
		m.Header.Set("Omicsq-Batch", fmt.Sprintf("sheet-%04d", i%200))
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			return err
		}
		if i%1000 == 999 {
			select {
			case <-e.js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				return errors.New("dead-letter publishes not acknowledged within 30s")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("dead-letter publishes not acknowledged within 30s")
	}
}
