package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/redrive"
)

const pageSize = 50

// dlqQuery is a DLQ page's filter and page, from the URL or a form.
type dlqQuery struct {
	Filter DLQFilter
	Page   int
	// From and To are the inputs as typed (RFC 3339 or 2006-01-02T15:04).
	From, To string
	Err      string
}

func parseDLQQuery(v url.Values) dlqQuery {
	q := dlqQuery{Filter: DLQFilter{Reason: strings.TrimSpace(v.Get("reason")), Code: strings.TrimSpace(v.Get("code")),
		Batch: strings.TrimSpace(v.Get("batch")), Key: strings.TrimSpace(v.Get("key"))},
		From: v.Get("from"), To: v.Get("to")}
	q.Page, _ = strconv.Atoi(v.Get("page"))
	q.Page = max(q.Page, 0)
	for _, t := range []struct {
		in  string
		out *time.Time
	}{{q.From, &q.Filter.From}, {q.To, &q.Filter.To}} {
		if t.in == "" {
			continue
		}
		at, err := parseTime(t.in)
		if err != nil {
			q.Err = fmt.Sprintf("time %q: use 2006-01-02T15:04 (UTC) or RFC 3339", t.in)
			continue
		}
		*t.out = at
	}
	return q
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, errors.New("bad time")
}

// values is q as URL parameters (for paging links and the redrive forms).
func (q dlqQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"reason": q.Filter.Reason, "code": q.Filter.Code, "batch": q.Filter.Batch,
		"key": q.Filter.Key, "from": q.From, "to": q.To} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

func (s *Server) dlqPage(w http.ResponseWriter, r *http.Request, who string) {
	q := parseDLQQuery(r.URL.Query())
	p := s.cfg.Index.Query(q.Filter, q.Page, pageSize)
	reasons := slices.Sorted(maps.Keys(s.cfg.Index.Reasons()))
	prev, next := q.values(), q.values()
	prev.Set("page", strconv.Itoa(q.Page-1))
	next.Set("page", strconv.Itoa(q.Page+1))
	// template.URL: the encoded query is built here from url.Values, so
	// html/template must not escape its '=' and '&' again.
	s.render(w, "dlq", who, map[string]any{"Q": q, "P": p, "Reasons": reasons, "Query": q.values().Encode(),
		"Prev": template.URL("/dlq?" + prev.Encode()), "Next": template.URL("/dlq?" + next.Encode()),
		"HasPrev": q.Page > 0, "HasNext": (q.Page+1)*pageSize < p.Matched})
}

// dlqJSON is the same query as JSON: what the page's live counter and the
// benchmark read.
func (s *Server) dlqJSON(w http.ResponseWriter, r *http.Request, _ string) {
	q := parseDLQQuery(r.URL.Query())
	if q.Err != "" {
		http.Error(w, q.Err, http.StatusBadRequest)
		return
	}
	size := pageSize
	if n, err := strconv.Atoi(r.URL.Query().Get("size")); err == nil && n >= 0 && n <= 1000 {
		size = n
	}
	p := s.cfg.Index.Query(q.Filter, q.Page, size)
	writeJSON(w, map[string]any{"matched": p.Matched, "total": p.Total, "ready": p.Ready, "rows": p.Rows})
}

// shownFields are the request fields a dead letter's page shows by
// default: identifiers of the platform's own objects and switches. Every
// other field (Name, Description, inputs, row UUIDs, paths, e-mails) may
// carry patient or sample identifiers and is redacted until revealed.
var shownFields = []string{"ApplicationId", "ApplicationVersionId", "EnvironmentId", "ProjectId", "TableId", "CacheClearDelay",
	"AccessMode", "FailureMode", "UseCallCache", "UseErrorOnHold", "ResultNotification", "TimeoutNotification",
	"TimeoutNotificationMinutes", "Report", "Resume", "Profile", "VolumeIds"}

// field is one line of a request as the page shows it.
type field struct {
	Name, Value string
	Redacted    bool
}

func requestFields(raw json.RawMessage, reveal bool) ([]field, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, err
	}
	var out []field
	for _, name := range slices.Sorted(maps.Keys(top)) {
		v := string(top[name])
		if !reveal && !slices.Contains(shownFields, name) {
			out = append(out, field{Name: name, Value: fmt.Sprintf("redacted (%d bytes)", len(v)), Redacted: true})
			continue
		}
		out = append(out, field{Name: name, Value: printable(v)})
	}
	return out, nil
}

func (s *Server) deadLetterPage(w http.ResponseWriter, r *http.Request, who string) {
	s.showDeadLetter(w, r, who, false)
}

// revealDeadLetter shows the inputs too. It is a POST with the CSRF token,
// so that only the console's own page can make the audit record saying
// who saw them.
func (s *Server) revealDeadLetter(w http.ResponseWriter, r *http.Request, who string) {
	s.showDeadLetter(w, r, who, true)
}

func (s *Server) showDeadLetter(w http.ResponseWriter, r *http.Request, who string, reveal bool) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	d, err := s.cfg.Client.DeadLetterAt(r.Context(), seq)
	if errors.Is(err, client.ErrNotFound) {
		s.cfg.Index.Remove(seq)
		http.Error(w, "no dead letter at this sequence (redriven or expired)", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, "read the dead letter: "+err.Error(), http.StatusBadGateway)
		return
	}
	if reveal {
		s.cfg.Audit.Info("console reveal", "who", who, "action", "reveal", "seq", seq)
	}
	data := map[string]any{"D": d, "Sum": d.Summary(), "Reveal": reveal, "Batch": d.Header.Get(headerBatch)}
	if dl := d.DeadLetter; dl != nil {
		if len(dl.Request) > 0 {
			if fields, err := requestFields(dl.Request, reveal); err == nil {
				data["Fields"] = fields
			}
		}
		// The API's error text often quotes the value it refused.
		data["Message"] = fmt.Sprintf("redacted (%d bytes)", len(dl.Error.Message))
		if reveal || dl.Error.Message == "" {
			data["Message"] = printable(dl.Error.Message)
		}
	}
	s.render(w, "deadletter", who, data)
}

// maxSelection bounds one redrive: its plan holds each selected dead
// letter's request, and its confirm form each sequence.
const maxSelection = 10000

// selection is what a redrive form selects: dead letters by sequence. A
// selection "by filter" is turned into the sequences the index matches
// when it is previewed, and the confirm form posts those, so a redrive
// never takes a dead letter that arrived after the preview.
type selection struct {
	Seqs     []uint64
	ByFilter bool
	Query    dlqQuery
}

func (s *Server) parseSelection(r *http.Request) (selection, error) {
	sel := selection{Query: parseDLQQuery(r.PostForm), ByFilter: r.PostForm.Get("all") == "1"}
	if sel.Query.Err != "" {
		return sel, errors.New(sel.Query.Err)
	}
	seqs := r.PostForm["seq"]
	if sel.ByFilter && len(seqs) == 0 {
		if !s.cfg.Index.Query(DLQFilter{}, 0, 0).Ready {
			return sel, errors.New("the console is still reading the dead-letter stream: try again in a moment")
		}
		sel.Seqs = s.cfg.Index.Select(sel.Query.Filter)
	}
	for _, v := range seqs {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return sel, fmt.Errorf("bad sequence %q", v)
		}
		sel.Seqs = append(sel.Seqs, n)
	}
	switch {
	case len(sel.Seqs) == 0 && sel.ByFilter:
		return sel, errors.New("no dead letter matches the filter")
	case len(sel.Seqs) == 0:
		return sel, errors.New("nothing selected: tick dead letters, or redrive every one the filter matches")
	case len(sel.Seqs) > maxSelection:
		return sel, fmt.Errorf("%d dead letters selected; a redrive takes at most %d at once: narrow the filter", len(sel.Seqs), maxSelection)
	}
	return sel, nil
}

// errBusy means another plan is reading the dead-letter stream.
var errBusy = errors.New("another redrive is being planned: try again when it is done")

// plan applies the CLI's redrive rules (internal/redrive) to the selected
// sequences, one plan at a time (a plan across keys reads the whole
// dead-letter stream).
func (s *Server) plan(r *http.Request, sel selection) (redrive.Plan, error) {
	select {
	case s.planning <- struct{}{}:
		defer func() { <-s.planning }()
	default:
		return redrive.Plan{}, errBusy
	}
	guard := redrive.OpenGuard(r.Context(), s.cfg.JS, s.cfg.Topology.LedgerBucket, s.cfg.Limits)
	planner := redrive.Planner{Client: s.cfg.Client, Guard: guard, Limits: s.cfg.Limits}
	want := map[uint64]bool{}
	keys := map[string]bool{}
	for _, seq := range sel.Seqs {
		want[seq] = true
		if row, ok := s.cfg.Index.Row(seq); ok {
			keys[row.Key] = true
		}
	}
	key := ""
	if len(keys) == 1 && len(want) == len(sel.Seqs) { // one key: read only its subject
		for k := range keys {
			key = k
		}
	}
	return planner.PlanMatching(r.Context(), key, func(d client.StoredDeadLetter) bool { return want[d.Sequence] }, nil)
}

// stepView is one step of a plan as the preview and result pages show it.
type stepView struct {
	Seq        uint64
	Key, Verb  string
	Why        string
	Refused    bool
	Superseded uint64
	// Unchecked: the ledger could not be read, so the worker compares the
	// request with the key's first submission at delivery instead.
	Unchecked string
}

func viewSteps(p redrive.Plan) (steps []stepView, redrives int) {
	for _, st := range p.Steps {
		v := stepView{Seq: st.Dead.Sequence, Key: printable(st.Dead.Key), Why: printable(st.Why), Refused: st.Refused}
		switch st.Kind {
		case redrive.Redrive:
			v.Verb = "redrive"
			redrives++
			if st.Unchecked != nil {
				v.Unchecked = "not checked against the ledger (" + printable(st.Unchecked.Error()) + "): the worker checks it at delivery"
			}
		case redrive.DeleteSuperseded:
			v.Verb, v.Superseded = "delete (superseded)", st.SupersededBy
		case redrive.Skip:
			v.Verb = "skip"
		case redrive.Fail:
			v.Verb, v.Why = "fail", printable(st.Err.Error())
		}
		steps = append(steps, v)
	}
	return steps, redrives
}

// planFromForm reads a redrive form and plans it; false means it answered
// the error.
func (s *Server) planFromForm(w http.ResponseWriter, r *http.Request) (selection, redrive.Plan, bool) {
	sel, err := s.parseSelection(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return sel, redrive.Plan{}, false
	}
	plan, err := s.plan(r, sel)
	if errors.Is(err, errBusy) {
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return sel, redrive.Plan{}, false
	}
	if err != nil {
		http.Error(w, "plan the redrive: "+err.Error(), http.StatusBadGateway)
		return sel, redrive.Plan{}, false
	}
	return sel, plan, true
}

func (s *Server) previewRedrive(w http.ResponseWriter, r *http.Request, who string) {
	sel, plan, ok := s.planFromForm(w, r)
	if !ok {
		return
	}
	steps, redrives := viewSteps(plan)
	s.render(w, "preview", who, map[string]any{"Steps": steps, "Redrives": redrives, "Scanned": plan.Scanned, "Sel": sel})
}

// tally counts what a redrive did.
type tally struct{ redriven, skipped, refused, failed int }

// redrive plans again (the DLQ may have changed since the preview) and
// carries the plan out.
func (s *Server) redrive(w http.ResponseWriter, r *http.Request, who string) {
	sel, plan, ok := s.planFromForm(w, r)
	if !ok {
		return
	}
	results, n := s.execute(r.Context(), plan)
	f := sel.Query.Filter
	s.cfg.Audit.Info("console redrive", "who", who, "action", "redrive", "selected", len(sel.Seqs), "by_filter", sel.ByFilter,
		"filter_reason", f.Reason, "filter_code", f.Code, "filter_key", f.Key != "", "filter_batch", f.Batch != "",
		"scanned", plan.Scanned, "redriven", n.redriven, "skipped", n.skipped, "refused", n.refused, "failed", n.failed)
	s.render(w, "redriven", who, map[string]any{"Steps": results, "Redriven": n.redriven, "Skipped": n.skipped, "Refused": n.refused, "Failed": n.failed})
}

// execute carries plan out, stopping at a failed publish like the CLI (a
// dead letter that could not be deleted after its publish is reported and
// the rest goes on), and drops what it deleted from the index.
func (s *Server) execute(ctx context.Context, plan redrive.Plan) ([]stepView, tally) {
	var n tally
	var done []uint64
	defer func() { s.cfg.Index.Remove(done...) }()
	results := make([]stepView, 0, len(plan.Steps))
	for _, st := range plan.Steps {
		v, _ := viewSteps(redrive.Plan{Steps: []redrive.Step{st}})
		view := v[0]
		switch st.Kind {
		case redrive.Skip:
			n.skipped++
			if st.Refused {
				n.refused++
			}
		case redrive.Fail:
			n.failed++
		case redrive.Redrive, redrive.DeleteSuperseded:
			if err := redrive.Execute(ctx, s.cfg.Client, st); err != nil {
				n.failed++
				view.Verb, view.Why = "failed", printable(err.Error())
				results = append(results, view)
				if st.Kind == redrive.Redrive && !errors.Is(err, client.ErrNotDeleted) {
					return results, n
				}
				continue
			}
			done = append(done, st.Dead.Sequence)
			view.Verb = "deleted (superseded)"
			if st.Kind == redrive.Redrive {
				n.redriven++
				view.Verb = "redriven"
			}
		}
		results = append(results, view)
	}
	return results, n
}

func (s *Server) requestPage(w http.ResponseWriter, r *http.Request, who string) {
	key := strings.TrimSpace(r.URL.Query().Get("key"))
	data := map[string]any{"Key": key}
	if key != "" {
		st, err := s.cfg.Client.State(r.Context(), key)
		if err != nil {
			data["Err"] = err.Error()
		} else {
			data["State"] = st
			data["Phase"] = st.Phase()
		}
		if h, err := s.ledgerHistory(r, key); err == nil {
			data["Ledger"] = h
		}
		if evs, more, err := s.statusEvents(r.Context(), key); err == nil {
			data["Events"], data["MoreEvents"] = evs, more
		}
	}
	s.render(w, "request", who, data)
}

// resume clears the pause flag the operator saw: the form carries the
// flag's revision, and a pause set since (another outage) is not cleared.
func (s *Server) resume(w http.ResponseWriter, r *http.Request, who string) {
	kv, err := s.cfg.JS.KeyValue(r.Context(), s.cfg.Topology.ControlBucket)
	if err != nil {
		http.Error(w, "control bucket: "+err.Error(), http.StatusBadGateway)
		return
	}
	seen, err := strconv.ParseUint(r.PostForm.Get("revision"), 10, 64)
	if err != nil {
		http.Error(w, "the form lacks the pause flag's revision", http.StatusBadRequest)
		return
	}
	cur, err := kv.Get(r.Context(), pause.StateKey)
	if err != nil {
		http.Error(w, "pause flag: "+err.Error(), http.StatusBadGateway)
		return
	}
	var st pause.State
	if err := json.Unmarshal(cur.Value(), &st); err != nil || !st.Paused {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if cur.Revision() != seen {
		http.Error(w, "the pause flag changed since the page was loaded: look again before resuming", http.StatusConflict)
		return
	}
	b, err := json.Marshal(pause.State{Paused: false, Since: s.cfg.Now().UTC(), By: "console:" + who})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if _, err := kv.Update(r.Context(), pause.StateKey, b, seen); err != nil {
		http.Error(w, "the pause flag changed since the page was loaded: look again before resuming", http.StatusConflict)
		return
	}
	s.cfg.Audit.Info("console resume", "who", who, "action", "resume", "paused_reason", string(st.Reason), "paused_since", st.Since)
	s.view.invalidate()
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
