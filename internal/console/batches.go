package console

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
)

// BatchesIndex follows the batches bucket into memory: each batch's record
// and, per member, only its outcome, so that the batches page shows every
// batch's progress without reading its members (a sheet may have 10,000).
type BatchesIndex struct {
	js     jetstream.JetStream
	bucket string
	log    *slog.Logger

	mu      sync.RWMutex
	batches map[string]*batchState // by batch token
}

type batchState struct {
	rec     client.BatchRecord
	members map[string]memberState // by key token
}

type memberState struct {
	outcome   string // client.BatchMember.Outcome(): "" until terminal
	submitted bool
}

// BatchView is one batch's line on the batches page.
type BatchView struct {
	Token  string
	Record client.BatchRecord
	// Members is the registered size (or, for a header-only batch, the
	// members seen); the rest count members by state.
	Members, Seen, Submitted, Waiting, Running int
	Succeeded, Failed, DeadLettered, Cancelled int
	Percent                                    int
}

// NewBatchesIndex returns an index of bucket; Run fills it.
func NewBatchesIndex(js jetstream.JetStream, bucket string, log *slog.Logger) *BatchesIndex {
	return &BatchesIndex{js: js, bucket: bucket, log: log, batches: map[string]*batchState{}}
}

// Run follows the bucket until ctx ends.
func (x *BatchesIndex) Run(ctx context.Context) {
	if x.bucket == "" {
		<-ctx.Done()
		return
	}
	followBucket(ctx, x.js, x.bucket, x.log, x.apply)
}

func (x *BatchesIndex) apply(e jetstream.KeyValueEntry) {
	btoken, ktoken, isMember := strings.Cut(e.Key(), ".m.")
	x.mu.Lock()
	defer x.mu.Unlock()
	b := x.batches[btoken]
	if b == nil {
		if e.Operation() != jetstream.KeyValuePut {
			return
		}
		b = &batchState{members: map[string]memberState{}}
		x.batches[btoken] = b
	}
	switch {
	case e.Operation() != jetstream.KeyValuePut && isMember:
		delete(b.members, ktoken)
	case e.Operation() != jetstream.KeyValuePut:
		delete(x.batches, btoken)
	case isMember:
		var m client.BatchMember
		if json.Unmarshal(e.Value(), &m) == nil {
			b.members[ktoken] = memberState{outcome: m.Outcome(), submitted: m.RunGroupID != ""}
		}
	default:
		var rec client.BatchRecord
		if json.Unmarshal(e.Value(), &rec) == nil {
			b.rec = rec
		}
	}
}

// List returns up to limit batches, newest first, and how many there are.
func (x *BatchesIndex) List(limit int) ([]BatchView, int) {
	x.mu.RLock()
	views := make([]BatchView, 0, len(x.batches))
	for tok, b := range x.batches {
		views = append(views, b.view(tok))
	}
	x.mu.RUnlock()
	slices.SortFunc(views, func(a, b BatchView) int { return b.Record.CreatedAt.Compare(a.Record.CreatedAt) })
	return views[:min(limit, len(views))], len(views)
}

func (b *batchState) view(tok string) BatchView {
	v := BatchView{Token: tok, Record: b.rec, Seen: len(b.members), Members: max(b.rec.Members, len(b.members))}
	for _, m := range b.members {
		if m.submitted {
			v.Submitted++
		}
		switch m.outcome {
		case client.BatchSucceeded:
			v.Succeeded++
		case client.BatchFailed:
			v.Failed++
		case client.BatchDeadLettered:
			v.DeadLettered++
		case client.BatchCancelled:
			v.Cancelled++
		case "":
			if m.submitted {
				v.Running++
			}
		}
	}
	v.Waiting = v.Members - v.Succeeded - v.Failed - v.DeadLettered - v.Cancelled - v.Running
	if v.Members > 0 {
		v.Percent = 100 * (v.Members - v.Waiting - v.Running) / v.Members
	}
	return v
}

func (s *Server) batchesPage(w http.ResponseWriter, r *http.Request, who string) {
	var rows []BatchView
	var total int
	if s.cfg.Batches != nil {
		rows, total = s.cfg.Batches.List(200)
	}
	s.render(w, "batches", who, map[string]any{"Rows": rows, "Total": total})
}

// batchPage shows one batch: its counts and every member (location, key,
// run group, status), read from the bucket.
func (s *Server) batchPage(w http.ResponseWriter, r *http.Request, who string) {
	id := r.URL.Query().Get("id")
	rec, members, err := s.cfg.Client.Batch(r.Context(), id)
	if errors.Is(err, client.ErrBatchNotFound) || id == "" {
		http.Error(w, "no such batch", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, "read the batch: "+err.Error(), http.StatusBadGateway)
		return
	}
	slices.SortFunc(members, func(a, b client.BatchMember) int { return strings.Compare(a.Location, b.Location) })
	running := 0
	for _, m := range members {
		if m.RunGroupID != "" && !m.Terminal {
			running++
		}
	}
	s.render(w, "batch", who, map[string]any{"Rec": rec, "Members": members, "Counts": client.CountBatch(members), "Running": running})
}

// cancelBatch marks the batch cancelled (client.CancelBatch, as enqueue
// batch cancel does): workers refuse its requests not yet submitted, and
// the tracker terminates its running groups.
func (s *Server) cancelBatch(w http.ResponseWriter, r *http.Request, who string) {
	id := r.PostForm.Get("id")
	rec, err := s.cfg.Client.CancelBatch(r.Context(), id)
	if err != nil {
		http.Error(w, "cancel the batch: "+err.Error(), http.StatusBadGateway)
		return
	}
	s.cfg.Audit.Info("console cancel batch", "who", who, "action", "cancel_batch", "members", rec.Members)
	http.Redirect(w, r, "/batch?id="+url.QueryEscape(id), http.StatusSeeOther)
}
