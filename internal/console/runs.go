package console

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/tracker"
)

// RunsIndex follows the tracker's runs bucket (one entry per followed run
// group) into memory, for runs by status.
type RunsIndex struct {
	js     jetstream.JetStream
	bucket string
	log    *slog.Logger

	mu   sync.RWMutex
	runs map[string]runRow // by KV key
}

type runRow struct {
	Key, RunGroupID, Status string
	Terminal                bool
	SubmittedAt, UpdatedAt  time.Time
	RetryOf                 string
}

// NewRunsIndex returns an index of bucket; Run fills it.
func NewRunsIndex(js jetstream.JetStream, bucket string, log *slog.Logger) *RunsIndex {
	return &RunsIndex{js: js, bucket: bucket, log: log, runs: map[string]runRow{}}
}

// Run follows the bucket until ctx ends.
func (x *RunsIndex) Run(ctx context.Context) {
	if x.bucket == "" {
		<-ctx.Done()
		return
	}
	followBucket(ctx, x.js, x.bucket, x.log, x.apply)
}

func (x *RunsIndex) apply(e jetstream.KeyValueEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(x.runs, e.Key())
		return
	}
	var en tracker.Entry
	if json.Unmarshal(e.Value(), &en) != nil {
		return
	}
	x.runs[e.Key()] = runRow{Key: en.Key, RunGroupID: en.RunGroupID, Status: statusOf(en), Terminal: en.Terminal,
		SubmittedAt: en.SubmittedAt, UpdatedAt: en.UpdatedAt, RetryOf: en.RetryOf}
}

func statusOf(e tracker.Entry) string {
	if e.Status == "" {
		return "submitted"
	}
	return strings.ToUpper(e.Status[:1]) + strings.ToLower(e.Status[1:])
}

// Counts counts the run groups by status.
func (x *RunsIndex) Counts() map[string]int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := map[string]int{}
	for _, r := range x.runs {
		out[r.Status]++
	}
	return out
}

// List returns up to limit run groups of status ("" for all), newest
// update first, and how many matched.
func (x *RunsIndex) List(status string, limit int) ([]runRow, int) {
	x.mu.RLock()
	var rows []runRow
	for _, r := range x.runs {
		if status == "" || strings.EqualFold(r.Status, status) {
			rows = append(rows, r)
		}
	}
	x.mu.RUnlock()
	slices.SortFunc(rows, func(a, b runRow) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
	n := len(rows)
	return rows[:min(limit, n)], n
}

func (s *Server) runsPage(w http.ResponseWriter, r *http.Request, who string) {
	status := r.URL.Query().Get("status")
	var rows []runRow
	var matched int
	counts := map[string]int{}
	if s.cfg.Runs != nil {
		rows, matched = s.cfg.Runs.List(status, 200)
		counts = s.cfg.Runs.Counts()
	}
	statuses := make([]string, 0, len(counts))
	for st := range counts {
		statuses = append(statuses, st)
	}
	slices.Sort(statuses)
	s.render(w, "runs", who, map[string]any{"Status": status, "Rows": rows, "Matched": matched, "Counts": counts,
		"Statuses": statuses, "Terminal": client.IsTerminalStatus})
}
