package operate

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/operate/operatetest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/redrive"
	"github.com/omicsq/omicsq/internal/submission"
	"github.com/omicsq/omicsq/internal/submit"
)

// deadLetter publishes a dead letter the way the worker does.
func (e *env) deadLetter(key, msgID, reason, code, field, request, raw string) {
	e.T.Helper()
	d := client.DeadLetter{Key: key, Reason: client.DeadLetterReason(reason), RawBase64: raw, Attempts: 1, Deliveries: 1,
		Error:    client.Failure{Class: "permanent", Code: code, Field: field, Message: "rejected"},
		FailedAt: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC), Worker: "fake"}
	if request != "" {
		d.Request = json.RawMessage(request)
	}
	if err := queue.PublishDeadLetter(e.T.Context(), e.JS, e.Topo, d, msgID); err != nil {
		e.T.Fatal(err)
	}
}

// dlqSeqs returns the sequences left in the DLQ stream.
func (e *env) dlqSeqs() []uint64 {
	e.T.Helper()
	var seqs []uint64
	for _, m := range e.Messages(e.Topo.DLQStream) {
		seqs = append(seqs, m.Sequence)
	}
	return seqs
}

func req(name string, extra string) string {
	return `{"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K","Name":"` + name + `"` + extra + `}`
}

func TestDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	const notExist = "ResourceNotFound.ApplicationNotExist"
	e.deadLetter("dl-a", "dl-a/1", "permanent_error", notExist, "", req("dl-a-v1", ""), "") // 1
	e.deadLetter("dl-b", "dl-b/1", "invalid_request", "InvalidParameterValue.InvalidRunOption", "Option.FailureMode",
		req("dl-b", `,"Option":{"FailureMode":"Bad","UseCallCache":true}`), "") // 2
	e.deadLetter("dl-c", "dl-c/1", "invalid_request", "InvalidParameter", "", "", "bm90IGpzb24=")                                  // 3
	e.deadLetter("dl-a", "dl-a/2", "permanent_error", notExist, "", req("dl-a-v2", ""), "")                                        // 4
	e.deadLetter("dl-e", "dl-e/1", "retries_exhausted", "RequestLimitExceeded", "", req("dl-e", ""), "")                           // 5
	e.deadLetter("dl-f", "dl-f/1", "permanent_error", "ResourceNotFound.TableNotExist", "", req("dl-f", `,"TableId":"tab-1"`), "") // 6
	e.deadLetter("dl-g", "dl-g/1", "permanent_error", "ResourceNotFound.TableNotExist", "", req("dl-g", `,"TableId":"tab-1"`), "") // 7
	e.deadLetter("dl-g", "dl-g/2", "retries_exhausted", "InternalError", "", req("dl-g", `,"TableId":"tab-1"`), "")                // 8
	if _, err := queue.PublishResult(t.Context(), e.JS, e.Topo, client.Result{Key: "dl-e", RunGroupID: "run-e", Attempts: 2}); err != nil {
		t.Fatal(err)
	}

	t.Run("list", func(t *testing.T) {
		r := e.run("dlq", "list")
		if r.Code != ExitOK {
			t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
		}
		lines := r.Lines()
		if len(lines) != 9 || !strings.HasPrefix(lines[0], "SEQ") {
			t.Fatalf("want a header and 8 rows:\n%s", r.Stdout)
		}
		for i, want := range []string{
			"1 dl-a permanent_error " + notExist + " 2026-11-27T08:00:00Z 1",
			"3 dl-c invalid_request InvalidParameter 2026-11-27T08:00:00Z 1",
			"8 dl-g retries_exhausted InternalError 2026-11-27T08:00:00Z 1",
		} {
			row := lines[[]int{1, 3, 8}[i]]
			if strings.Join(strings.Fields(row), " ") != want {
				t.Errorf("row %q, want %q", row, want)
			}
		}
		r = e.run("dlq", "list", "--code", notExist)
		if got := len(r.Lines()) - 1; got != 2 || !strings.Contains(r.Stderr, "2 of 8 dead letters") {
			t.Errorf("--code: %d rows\n%s%s", got, r.Stdout, r.Stderr)
		}
		r = e.run("dlq", "list", "--json", "--reason", "invalid_request")
		got := jsonLines[client.DeadLetterSummary](t, r.Stdout)
		if len(got) != 2 || got[0].Seq != 2 || got[0].Field != "Option.FailureMode" || got[0].Raw || got[1].Seq != 3 || !got[1].Raw || got[1].Key != "dl-c" {
			t.Errorf("--json --reason: %+v", got)
		}
	})

	t.Run("show", func(t *testing.T) {
		for _, args := range [][]string{{"dl-b"}, {"2"}, {"--key", "dl-b"}, {"--seq", "2"}} {
			r := e.run(append([]string{"dlq", "show"}, args...)...)
			d, err := client.DecodeDeadLetter([]byte(r.Stdout))
			if r.Code != ExitOK || err != nil || d.Key != "dl-b" || !strings.Contains(r.Stdout, "\n  \"request\": {") ||
				!strings.Contains(r.Stderr, "dead letter at sequence 2") {
				t.Errorf("show %v: exit %d, decode %v\n%s%s", args, r.Code, err, r.Stdout, r.Stderr)
			}
		}
		// The latest dead letter of a key.
		r := e.run("dlq", "show", "dl-a")
		if !strings.Contains(r.Stdout, "dl-a-v2") {
			t.Errorf("show dl-a is not the latest:\n%s", r.Stdout)
		}
		for _, args := range [][]string{{"no-such-key"}, {"999"}} {
			r := e.run(append([]string{"dlq", "show"}, args...)...)
			if r.Code != ExitFailed || !strings.Contains(r.Stderr, "no dead letter") {
				t.Errorf("show %v: exit %d\n%s", args, r.Code, r.Stderr)
			}
		}
	})

	runRedrive := func(args ...string) operatetest.Result {
		t.Helper()
		return e.run(append([]string{"dlq", "redrive"}, args...)...)
	}

	t.Run("redrive", func(t *testing.T) {
		// Re-validation rejects the unfixed request: nothing changes.
		r := runRedrive("--key", "dl-b")
		if r.Code != ExitFailed || !strings.Contains(r.Stdout,
			"skipped seq=2 key=dl-b: re-validation failed: Option.FailureMode: InvalidParameterValue.InvalidRunOption: must be ContinueWhilePossible or NoNewCalls") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		// A bad edit is rejected too.
		r = runRedrive("--key", "dl-f", "--set", "AccessMode=SHARED")
		if r.Code != ExitFailed || !strings.Contains(r.Stdout, "skipped seq=6 key=dl-f: re-validation failed: AccessMode: InvalidParameterValue: must be PRIVATE or PUBLIC") {
			t.Fatalf("bad edit: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		// A dry run changes nothing.
		r = runRedrive("--key", "dl-b", "--set", "Option.FailureMode=NoNewCalls", "--dry-run")
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "would redrive seq=2 key=dl-b" {
			t.Fatalf("dry run: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		if n := len(e.Messages(e.Topo.RequestsStream)); n != 0 || !slices.Equal(e.dlqSeqs(), []uint64{1, 2, 3, 4, 5, 6, 7, 8}) {
			t.Fatalf("something changed: %d requests, DLQ %v", n, e.dlqSeqs())
		}

		// The fix: republished under the same key, DLQ entry deleted.
		r = runRedrive("--key", "dl-b", "--set", "Option.FailureMode=NoNewCalls", "--set", `Description="fixed by hand"`)
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "redriven seq=2 key=dl-b" {
			t.Fatalf("redrive: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		msgs := e.Messages(e.Topo.RequestsStream)
		if len(msgs) != 1 {
			t.Fatalf("%d requests published, want 1", len(msgs))
		}
		m := msgs[0]
		if m.Header.Get(client.HeaderKey) != "dl-b" || m.Header.Get(client.HeaderRedriveOf) != "2" || m.Header.Get(client.HeaderMsgID) != "dl-b/redrive/2" {
			t.Errorf("headers %v", m.Header)
		}
		got, err := submit.DecodeRunApplication(m.Data, submit.DefaultLimits())
		if err != nil || *got.Option.FailureMode != "NoNewCalls" || !*got.Option.UseCallCache || *got.Description != "fixed by hand" {
			t.Errorf("republished body %s (%v)", m.Data, err)
		}
		if want := canonical(t, string(m.Data)); string(want) != string(m.Data) {
			t.Errorf("republished body is not canonical: %s", m.Data)
		}

		// Selection by code: the newest dead letter of dl-a is redriven,
		// the older one deleted as superseded.
		r = runRedrive("--code", notExist)
		if r.Code != ExitOK || r.Stdout != "redriven seq=4 key=dl-a\ndeleted seq=1 key=dl-a: superseded by seq 4\n" {
			t.Fatalf("--code: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		msgs = e.Messages(e.Topo.RequestsStream)
		if len(msgs) != 2 || !strings.Contains(string(msgs[1].Data), `"Name":"dl-a-v2"`) || msgs[1].Header.Get(client.HeaderKey) != "dl-a" {
			t.Errorf("dl-a redrive published %d messages; last %s", len(msgs), msgs[len(msgs)-1].Data)
		}

		// Raw dead letters, keys that already have a result, and keys whose
		// newest dead letter is not selected are skipped.
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--reason", "invalid_request"}, "skipped seq=3 key=dl-c: raw (non-JSON) dead letter"},
			{[]string{"--key", "dl-e"}, "skipped seq=5 key=dl-e: the key already has a result (run group run-e)"},
			{[]string{"--key", "dl-g", "--code", "ResourceNotFound.TableNotExist"}, "skipped seq=7 key=dl-g: superseded by seq 8, which the selection does not match"},
			{[]string{"--key", "nobody"}, ""},
		} {
			r := runRedrive(tc.args...)
			if r.Code != ExitFailed || !strings.Contains(r.Stdout, tc.want) {
				t.Errorf("redrive %v: exit %d\n%s%s", tc.args, r.Code, r.Stdout, r.Stderr)
			}
		}
		if got, want := e.dlqSeqs(), []uint64{3, 5, 6, 7, 8}; !slices.Equal(got, want) {
			t.Errorf("DLQ holds %v, want %v", got, want)
		}
		if n := len(e.Messages(e.Topo.RequestsStream)); n != 2 {
			t.Errorf("%d requests published in total, want 2", n)
		}
	})

	t.Run("redrive all dry run", func(t *testing.T) {
		r := runRedrive("--all", "--dry-run")
		want := []string{
			"skipped seq=3 key=dl-c: raw (non-JSON) dead letter: nothing to re-validate; fix and republish it by hand",
			"skipped seq=5 key=dl-e: the key already has a result (run group run-e)",
			"would redrive seq=6 key=dl-f",
			"would redrive seq=8 key=dl-g",
			"would delete seq=7 key=dl-g: superseded by seq 8",
		}
		if got := r.Lines(); !slices.Equal(got, want) || r.Code != ExitFailed {
			t.Errorf("exit %d\n got %q\nwant %q", r.Code, got, want)
		}
		if got := e.dlqSeqs(); !slices.Equal(got, []uint64{3, 5, 6, 7, 8}) {
			t.Errorf("dry run changed the DLQ: %v", got)
		}
	})
}

// pin writes key's ledger entry as the worker leaves it after a dead
// letter: the identity of request pinned, maybeCreated as given.
func (e *env) pin(key, request string, maybeCreated bool) {
	e.T.Helper()
	r, err := submit.DecodeRunApplication([]byte(request), submit.DefaultLimits())
	if err != nil {
		e.T.Fatal(err)
	}
	id := submission.IdentityOf(r, time.Now())
	l, err := ledger.Open(e.T.Context(), e.JS, e.Topo.LedgerBucket)
	if err != nil {
		e.T.Fatal(err)
	}
	if _, err := l.Put(e.T.Context(), ledger.Entry{Key: key, State: ledger.StateDead, Calls: 1, MaybeCreated: maybeCreated, Identity: &id}, 0); err != nil {
		e.T.Fatal(err)
	}
}

// TestDLQRedriveIdentity: a redrive must not turn a key that may have
// created its run group into another request; the refusal comes at once and
// nothing is published or deleted.
func TestDLQRedriveIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	const code = "InternalError"
	reqA := req("id-a", `,"ProjectId":"prj-1"`)
	e.deadLetter("id-a", "id-a/1", "retries_exhausted", code, "", reqA, "") // 1
	e.pin("id-a", reqA, true)
	reqB := req("id-b", "")
	e.deadLetter("id-b", "id-b/1", "permanent_error", code, "", reqB, "") // 2
	e.pin("id-b", reqB, false)
	e.deadLetter("id-c", "id-c/1", "invalid_request", code, "", req("id-c", ""), "") // 3: no ledger entry
	reqD := req("id-d", "")
	e.deadLetter("id-d", "id-d/1", "retries_exhausted", code, "", reqD, "") // 4
	e.pin("id-d", reqD, true)
	// An identity_changed dead letter: the key's first request was another.
	e.deadLetter("id-e", "id-e/1", "identity_changed", "", "", req("id-e-second", ""), "") // 5
	e.pin("id-e", req("id-e-first", ""), true)

	runRedrive := func(args ...string) operatetest.Result {
		t.Helper()
		return e.run(append([]string{"dlq", "redrive"}, args...)...)
	}
	requests := func() int { return len(e.Messages(e.Topo.RequestsStream)) }
	unchanged := func(t *testing.T, r operatetest.Result, wantRequests int, wantDLQ ...uint64) {
		t.Helper()
		if n := requests(); n != wantRequests {
			t.Errorf("%d requests published, want %d\n%s%s", n, wantRequests, r.Stdout, r.Stderr)
		}
		if got := e.dlqSeqs(); !slices.Equal(got, wantDLQ) {
			t.Errorf("DLQ holds %v, want %v", got, wantDLQ)
		}
	}
	refusal := func(seq int, key, field string) string {
		return fmt.Sprintf("skipped seq=%d key=%s: "+redrive.RefusalHead+"an edited %s would not be the same request and could create "+
			"a second run group. Redrive it without --set, which looks the run group up first.", seq, key, field)
	}

	t.Run("edited Name refused", func(t *testing.T) {
		r := runRedrive("--key", "id-a", "--set", "Name=other")
		if r.Code != ExitFailed || strings.TrimSpace(r.Stdout) != refusal(1, "id-a", "Name") ||
			!strings.Contains(r.Stderr, "0 redriven, 1 skipped (1 refused)") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})
	t.Run("edited ProjectId refused", func(t *testing.T) {
		r := runRedrive("--key", "id-a", "--set", "ProjectId=prj-x")
		if r.Code != ExitFailed || strings.TrimSpace(r.Stdout) != refusal(1, "id-a", "ProjectId") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})
	t.Run("other edit refused", func(t *testing.T) {
		r := runRedrive("--key", "id-a", "--set", `Description="changed"`)
		if r.Code != ExitFailed || strings.TrimSpace(r.Stdout) != refusal(1, "id-a", "request") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})
	t.Run("dry run shows the refusal", func(t *testing.T) {
		r := runRedrive("--key", "id-a", "--set", "Name=other", "--dry-run")
		if r.Code != ExitFailed || strings.TrimSpace(r.Stdout) != refusal(1, "id-a", "Name") ||
			!strings.Contains(r.Stderr, "0 would redrive, 1 skipped (1 refused)") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})
	t.Run("unedited dead letter of another request refused", func(t *testing.T) {
		r := runRedrive("--key", "id-e")
		if r.Code != ExitFailed || !strings.Contains(r.Stdout, "skipped seq=5 key=id-e: "+redrive.RefusalHead+"this dead letter's Name differs") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})
	t.Run("unreadable ledger refuses edits only", func(t *testing.T) {
		r := runRedrive("--key", "id-c", "--set", `Description="fixed"`, "--ledger-bucket", "NO_SUCH_LEDGER")
		if r.Code != ExitFailed || !strings.Contains(r.Stdout, "skipped seq=3 key=id-c: refused: the ledger (bucket NO_SUCH_LEDGER) could not be read") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
		r = runRedrive("--key", "id-c", "--ledger-bucket", "NO_SUCH_LEDGER", "--dry-run")
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "would redrive seq=3 key=id-c" ||
			!strings.Contains(r.Stderr, "without the ledger check") {
			t.Fatalf("unedited: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 0, 1, 2, 3, 4, 5)
	})

	t.Run("unedited redrive published", func(t *testing.T) {
		r := runRedrive("--key", "id-a")
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "redriven seq=1 key=id-a" {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 1, 2, 3, 4, 5)
	})
	t.Run("identity-preserving edit published", func(t *testing.T) {
		r := runRedrive("--key", "id-d", "--set", `Name="id-d"`)
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "redriven seq=4 key=id-d" {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 2, 2, 3, 5)
	})
	t.Run("edit of a definitely rejected key published", func(t *testing.T) {
		r := runRedrive("--key", "id-b", "--set", "Name=other")
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "redriven seq=2 key=id-b" {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 3, 3, 5)
		msgs := e.Messages(e.Topo.RequestsStream)
		if m := msgs[len(msgs)-1]; m.Header.Get(client.HeaderKey) != "id-b" || !strings.Contains(string(m.Data), `"Name":"other"`) {
			t.Errorf("published %v %s", m.Header, m.Data)
		}
	})
	t.Run("edit of a key without ledger entry published", func(t *testing.T) {
		r := runRedrive("--key", "id-c", "--set", `Description="fixed"`)
		if r.Code != ExitOK || strings.TrimSpace(r.Stdout) != "redriven seq=3 key=id-c" {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		unchanged(t, r, 4, 5)
	})
}
