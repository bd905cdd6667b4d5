package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/console"
	"github.com/omicsq/omicsq/internal/pause"
	"github.com/omicsq/omicsq/internal/queue"
)

func TestUnauthenticatedRequestsGet401(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for _, path := range []string{"/", "/dlq", "/api/overview", "/api/dlq", "/dlq/1", "/requests?key=k", "/runs"} {
		for _, auth := range []string{"", "wrong"} {
			resp, _ := e.do("GET", path, auth, nil, nil)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s with auth %q: %d, want 401", path, auth, resp.StatusCode)
			}
			if auth == "" && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("GET %s: no Basic challenge", path)
			}
		}
	}
	resp, _ := e.do("POST", "/dlq/redrive", "", url.Values{"all": {"1"}}, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /dlq/redrive unauthenticated: %d, want 401", resp.StatusCode)
	}
	for _, auth := range []string{"bearer", "basic"} {
		if resp, _ := e.do("GET", "/", auth, nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET / with %s: %d", auth, resp.StatusCode)
		}
	}
	if resp, _ := e.do("GET", "/healthz", "", nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("healthz needs no authentication: %d", resp.StatusCode)
	}
}

func TestActionsNeedAValidCSRFToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	d := e.deadLetter("needs-csrf")
	e.waitIndexed(1)
	seq := strconv.FormatUint(d.Sequence, 10)
	for name, form := range map[string]url.Values{
		"none":  {"seq": {seq}},
		"wrong": {"seq": {seq}, "csrf": {"AAAA"}},
		// alice's token is not bob's: tokens are bound to the operator.
		"another operator's": {"seq": {seq}, "csrf": {e.csrf("basic")}},
	} {
		for _, path := range []string{"/dlq/redrive", "/dlq/preview", "/resume"} {
			resp, _ := e.do("POST", path, "bearer", form, nil)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST %s with %s CSRF token: %d, want 403", path, name, resp.StatusCode)
			}
		}
	}
	// A cross-site browser request is refused even with the right token.
	form := url.Values{"seq": {seq}, "csrf": {e.csrf("bearer")}}
	resp, _ := e.do("POST", "/dlq/redrive", "bearer", form, http.Header{"Sec-Fetch-Site": {"cross-site"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site POST: %d, want 403", resp.StatusCode)
	}
	if _, err := e.cl.DeadLetterAt(context.Background(), d.Sequence); err != nil {
		t.Fatalf("a refused action changed the DLQ: %v", err)
	}
	if !strings.Contains(e.audit.String(), `"why":"csrf"`) {
		t.Errorf("refusals are not audited:\n%s", e.audit.String())
	}
	// The same form with the token works.
	resp, page := e.do("POST", "/dlq/redrive", "bearer", form, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "<strong>1</strong> redriven") {
		t.Fatalf("redrive with the token: %d\n%s", resp.StatusCode, page)
	}
}

func TestReadOnlyRefusesActions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1, readOnly: true})
	d := e.deadLetter("read-only")
	e.waitIndexed(1)
	tok := e.csrf("bearer")
	seq := strconv.FormatUint(d.Sequence, 10)
	for _, path := range []string{"/dlq/redrive", "/resume"} {
		resp, _ := e.do("POST", path, "bearer", url.Values{"seq": {seq}, "csrf": {tok}}, nil)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("read-only POST %s: %d, want 403", path, resp.StatusCode)
		}
	}
	_, page := e.do("GET", "/dlq", "bearer", nil, nil)
	if strings.Contains(page, "preview-selected") || !strings.Contains(page, "read-only") {
		t.Errorf("the read-only DLQ page offers actions")
	}
	if _, err := e.cl.DeadLetterAt(context.Background(), d.Sequence); err != nil {
		t.Fatalf("read-only mode changed the DLQ: %v", err)
	}
}

// A dead letter of a key that already has its run group is not redriven:
// the console applies the CLI's rules, and the sandbox's registry shows one
// run group.
func TestConsoleRedriveNeverSubmitsTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	ctx := context.Background()
	p := e.publish("has-group")
	if o := e.waitOutcome(p); o.Dead {
		t.Fatalf("want a result, got a dead letter %+v", o.DeadLetter)
	}
	// A stale dead letter of the same key (an earlier delivery's, say).
	d := client.DeadLetter{Key: "has-group", Request: body("has-group"), Reason: client.ReasonPermanentError,
		Error: client.Failure{Class: "permanent", Code: "InvalidParameterValue.InvalidInputJsonFormat"}}
	if err := queue.PublishDeadLetter(ctx, e.js, e.topo, d, "stale/1"); err != nil {
		t.Fatal(err)
	}
	e.waitIndexed(1)
	before := e.requestsPublished()
	tok := e.csrf("bearer")
	resp, page := e.do("POST", "/dlq/redrive", "bearer", url.Values{"all": {"1"}, "key": {"has-group"}, "csrf": {tok}}, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "<strong>0</strong> redriven") || !strings.Contains(page, "already has a result") {
		t.Fatalf("redrive: %d\n%s", resp.StatusCode, page)
	}
	time.Sleep(time.Second) // what a second publish would need to be submitted
	if n := e.groupsNamed("has-group"); n != 1 {
		t.Fatalf("the sandbox holds %d run groups named has-group, want 1", n)
	}
	if after := e.requestsPublished(); after != before {
		t.Fatalf("the console published %d requests", after-before)
	}
	if !strings.Contains(e.audit.String(), `"redriven":0`) || !strings.Contains(e.audit.String(), `"skipped":1`) {
		t.Errorf("audit record:\n%s", e.audit.String())
	}
}

func (e *env) requestsPublished() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), e.topo.RequestsStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// Inputs may carry patient identifiers: redacted unless revealed, and the
// reveal is audited; the audit log never holds request content.
func TestDeadLetterInputsRedactedByDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	d := e.deadLetter("redact-me")
	e.waitIndexed(1)
	path := "/dlq/" + strconv.FormatUint(d.Sequence, 10)
	_, page := e.do("GET", path, "bearer", nil, nil)
	if strings.Contains(page, "P-redact-me") || !strings.Contains(page, "redacted (") || !strings.Contains(page, "app-1") {
		t.Fatalf("redacted page:\n%s", page)
	}
	if _, page = e.do("GET", path+"?reveal=1", "basic", nil, nil); strings.Contains(page, "P-redact-me") {
		t.Fatal("a GET revealed the inputs: a link from elsewhere could")
	}
	if resp, _ := e.do("POST", path+"/reveal", "basic", url.Values{}, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("reveal without a CSRF token: %d", resp.StatusCode)
	}
	_, page = e.do("POST", path+"/reveal", "basic", url.Values{"csrf": {e.csrf("basic")}}, nil)
	if !strings.Contains(page, "P-redact-me") {
		t.Fatalf("revealed page lacks the input")
	}
	audit := e.audit.String()
	if !strings.Contains(audit, `"action":"reveal"`) || !strings.Contains(audit, `"who":"alice"`) || strings.Contains(audit, "P-redact-me") {
		t.Fatalf("audit:\n%s", audit)
	}
}

// Paging keeps the filter, and "redrive all matching" takes what was
// previewed: a dead letter that arrives after the preview stays.
func TestPagingAndRedriveByFilterTakeWhatWasShown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	ctx := context.Background()
	stale := func(key string) {
		d := client.DeadLetter{Key: key, Request: body(key), Reason: client.ReasonRetriesExhausted,
			Error: client.Failure{Class: "retryable", Code: "InternalError"}}
		if err := queue.PublishDeadLetter(ctx, e.js, e.topo, d, key+"/1"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 60 {
		stale(fmt.Sprintf("page-%02d", i))
	}
	e.waitIndexed(60)
	_, first := e.do("GET", "/dlq?reason=retries_exhausted", "bearer", nil, nil)
	_, rest, ok := strings.Cut(first, `<a href="`)
	for ok && !strings.Contains(rest[:80], `id="older"`) {
		_, rest, ok = strings.Cut(rest, `<a href="`)
	}
	if !ok {
		t.Fatalf("no older link on the first page:\n%s", first)
	}
	href, _, _ := strings.Cut(rest, `"`)
	href = strings.ReplaceAll(href, "&amp;", "&")
	_, second := e.do("GET", href, "bearer", nil, nil)
	if n := strings.Count(second, `name="seq"`); n != 10 || !strings.Contains(second, "page 2") {
		t.Fatalf("the second page (%s) lists %d dead letters, want 10", href, n)
	}

	tok := e.csrf("bearer")
	resp, preview := e.do("POST", "/dlq/preview", "bearer", url.Values{"all": {"1"}, "reason": {"retries_exhausted"}, "csrf": {tok}}, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(preview, "<strong>60</strong> would be redriven") {
		t.Fatalf("preview: %d\n%s", resp.StatusCode, preview)
	}
	confirm := url.Values{"csrf": {tok}, "all": {"1"}}
	for _, part := range strings.Split(preview, `name="seq" value="`)[1:] {
		seq, _, _ := strings.Cut(part, `"`)
		confirm.Add("seq", seq)
	}
	stale("late-arrival")
	e.waitIndexed(61)
	resp, done := e.do("POST", "/dlq/redrive", "bearer", confirm, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(done, "<strong>60</strong> redriven") {
		t.Fatalf("redrive: %d\n%s", resp.StatusCode, done)
	}
	if _, err := e.cl.LatestDeadLetter(ctx, "late-arrival"); err != nil {
		t.Fatalf("the dead letter that arrived after the preview was taken: %v", err)
	}
}

// Resume clears only the pause the operator saw.
func TestResumeClearsOnlyThePauseShown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	kv, err := e.js.KeyValue(ctx, e.topo.ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	seen, err := kv.Put(ctx, pause.StateKey, []byte(`{"paused":true,"reason":"environment","since":"2026-12-03T00:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, page := e.do("GET", "/", "bearer", nil, nil)
	if !strings.Contains(page, `name="revision" value="`+strconv.FormatUint(seen, 10)+`"`) {
		t.Fatalf("the overview's resume form lacks the flag's revision %d", seen)
	}
	// Another pause is set after the page was loaded.
	if _, err := kv.Put(ctx, pause.StateKey, []byte(`{"paused":true,"reason":"unreachable","since":"2026-12-03T00:01:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	tok := e.csrf("bearer")
	if resp, _ := e.do("POST", "/resume", "bearer", url.Values{"csrf": {tok}, "revision": {strconv.FormatUint(seen, 10)}}, nil); resp.StatusCode != http.StatusConflict {
		t.Fatalf("a stale resume: %d, want 409", resp.StatusCode)
	}
	cur, err := kv.Get(ctx, pause.StateKey)
	if err != nil || !strings.Contains(string(cur.Value()), `"paused":true`) {
		t.Fatalf("the newer pause was cleared: %s %v", cur.Value(), err)
	}
	if resp, _ := e.do("POST", "/resume", "bearer", url.Values{"csrf": {tok}, "revision": {strconv.FormatUint(cur.Revision(), 10)}}, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("resume: %d", resp.StatusCode)
	}
	if cur, err = kv.Get(ctx, pause.StateKey); err != nil || strings.Contains(string(cur.Value()), `"paused":true`) {
		t.Fatalf("after resume: %s %v", cur.Value(), err)
	}
	if !strings.Contains(e.audit.String(), `"action":"resume"`) {
		t.Errorf("resume not audited:\n%s", e.audit.String())
	}
}

// A dead letter deleted behind the console's back (the CLI's redrive)
// leaves its index at the next check.
func TestIndexFollowsDeletionsElsewhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	a := e.deadLetter("deleted-elsewhere")
	e.deadLetter("stays")
	e.waitIndexed(2)
	if err := e.cl.DeleteDeadLetter(context.Background(), a.Sequence); err != nil {
		t.Fatal(err)
	}
	e.waitIndexed(1)
	if _, page := e.do("GET", "/dlq", "bearer", nil, nil); strings.Contains(page, "deleted-elsewhere") || !strings.Contains(page, "stays") {
		t.Fatalf("the DLQ page after the deletion:\n%s", page)
	}
}

// A sample sheet's batch: the batches page shows its progress to the end,
// the batch page its members by sheet row, and cancel is an audited action.
func TestBatchesPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	ctx := context.Background()
	const id = "sheet-2026-12-03"
	var members []client.BatchMember
	var reqs []client.Request
	for i := range 3 {
		key := fmt.Sprintf("B-%02d", i)
		members = append(members, client.BatchMember{Key: key, Location: fmt.Sprintf("samples.csv:%d", i+2)})
		reqs = append(reqs, client.Request{Key: key, Body: body(key), Batch: id})
	}
	if err := e.cl.RegisterBatch(ctx, id, members); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.PublishBatch(ctx, reqs); err != nil {
		t.Fatal(err)
	}
	var page string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, page = e.do("GET", "/batches", "bearer", nil, nil)
		if strings.Contains(page, ">complete<") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the batch never showed complete:\n%s", page)
		}
	}
	if !strings.Contains(page, "100%") || !strings.Contains(page, `<td>3</td>`) {
		t.Errorf("batches page:\n%s", page)
	}
	_, detail := e.do("GET", "/batch?id="+url.QueryEscape(id), "bearer", nil, nil)
	for _, want := range []string{"samples.csv:2", "samples.csv:4", "3 members: 0 running, 3 succeeded"} {
		if !strings.Contains(detail, want) {
			t.Errorf("batch page lacks %q:\n%s", want, detail)
		}
	}
	if strings.Contains(detail, "cancel-batch") {
		t.Error("a complete batch offers cancel")
	}
	if resp, _ := e.do("GET", "/batch?id=nope", "bearer", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown batch: %d", resp.StatusCode)
	}

	// Cancel a second batch whose requests are not published yet.
	if err := e.cl.RegisterBatch(ctx, "sheet-cancelled", members[:1]); err != nil {
		t.Fatal(err)
	}
	tok := e.csrf("bearer")
	if resp, _ := e.do("POST", "/batch/cancel", "bearer", url.Values{"id": {"sheet-cancelled"}}, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cancel without CSRF: %d", resp.StatusCode)
	}
	if resp, body := e.do("POST", "/batch/cancel", "bearer", url.Values{"id": {"sheet-cancelled"}, "csrf": {tok}}, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Cancelled at") {
		t.Fatalf("cancel: %d\n%s", resp.StatusCode, body)
	}
	if rec, _, err := e.cl.Batch(ctx, "sheet-cancelled"); err != nil || rec.CancelledAt == nil {
		t.Fatalf("the batch record after cancel: %+v %v", rec, err)
	}
	if !strings.Contains(e.audit.String(), `"action":"cancel_batch"`) || strings.Contains(e.audit.String(), "sheet-cancelled") {
		t.Errorf("audit:\n%s", e.audit.String())
	}
}

// The overview sums each lane's flows: an urgent request waiting while
// the fleet is paused shows under urgent, a legacy one under routine.
func TestOverviewBacklogByLane(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{workers: 1})
	ctx := context.Background()
	kv, err := e.js.KeyValue(ctx, e.topo.ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, pause.StateKey, []byte(`{"paused":true,"reason":"operator","since":"2026-12-03T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the worker sees the flag
	reqs := []client.Request{
		{Key: "lane-u1", Body: body("lane-u1"), Priority: client.PriorityUrgent, FairnessKey: "icu"},
		{Key: "lane-u2", Body: body("lane-u2"), Priority: client.PriorityUrgent, FairnessKey: "oncology"},
		{Key: "lane-r1", Body: body("lane-r1")},
	}
	if _, err := e.cl.PublishBatch(ctx, reqs); err != nil {
		t.Fatal(err)
	}
	var o console.Overview
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		_, b := e.do("GET", "/api/overview", "bearer", nil, nil)
		if err := json.Unmarshal([]byte(b), &o); err != nil {
			t.Fatal(err)
		}
		if len(o.Lanes) == 3 && o.Lanes[0].Pending == 2 && o.Lanes[2].Pending == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lanes: %+v", o.Lanes)
		}
	}
	if o.Lanes[0].Lane != "urgent" || o.Lanes[0].Flows != 2 || o.Lanes[1].Pending != 0 {
		t.Errorf("lanes: %+v", o.Lanes)
	}
}
