package main

import (
	"bufio"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
)

// deadLetter publishes a dead letter the way the worker does.
func (e *env) deadLetter(key, msgID, reason, code, field, request, raw string) {
	e.t.Helper()
	d := queue.DeadLetter{Key: key, Reason: reason, RawBase64: raw, Attempts: 1, Deliveries: 1,
		Error:    queue.Failure{Class: "permanent", Code: code, Field: field, Message: "rejected"},
		FailedAt: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC), Worker: "fake"}
	if request != "" {
		d.Request = json.RawMessage(request)
	}
	if err := queue.PublishDeadLetter(e.t.Context(), e.js, e.topo, d, msgID); err != nil {
		e.t.Fatal(err)
	}
}

// dlqSeqs returns the sequences left in the DLQ stream.
func (e *env) dlqSeqs() []uint64 {
	e.t.Helper()
	var seqs []uint64
	for _, m := range e.messages(e.topo.DLQStream) {
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
	if _, err := queue.PublishResult(t.Context(), e.js, e.topo, queue.Result{Key: "dl-e", RunGroupID: "run-e", Attempts: 2}); err != nil {
		t.Fatal(err)
	}

	t.Run("list", func(t *testing.T) {
		r := e.run("", "dlq", "list")
		if r.code != exitOK {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		lines := r.lines()
		if len(lines) != 9 || !strings.HasPrefix(lines[0], "SEQ") {
			t.Fatalf("want a header and 8 rows:\n%s", r.stdout)
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
		r = e.run("", "dlq", "list", "--code", notExist)
		if got := len(r.lines()) - 1; got != 2 || !strings.Contains(r.stderr, "2 of 8 dead letters") {
			t.Errorf("--code: %d rows\n%s%s", got, r.stdout, r.stderr)
		}
		r = e.run("", "dlq", "list", "--json", "--reason", "invalid_request")
		var got []listEntry
		sc := bufio.NewScanner(strings.NewReader(r.stdout))
		for sc.Scan() {
			var le listEntry
			if err := json.Unmarshal(sc.Bytes(), &le); err != nil {
				t.Fatalf("--json line %q: %v", sc.Text(), err)
			}
			got = append(got, le)
		}
		if len(got) != 2 || got[0].Seq != 2 || got[0].Field != "Option.FailureMode" || got[0].Raw || got[1].Seq != 3 || !got[1].Raw || got[1].Key != "dl-c" {
			t.Errorf("--json --reason: %+v", got)
		}
	})

	t.Run("show", func(t *testing.T) {
		for _, args := range [][]string{{"dl-b"}, {"2"}, {"--key", "dl-b"}, {"--seq", "2"}} {
			r := e.run("", append([]string{"dlq", "show"}, args...)...)
			d, err := queue.DecodeDeadLetter([]byte(r.stdout))
			if r.code != exitOK || err != nil || d.Key != "dl-b" || !strings.Contains(r.stdout, "\n  \"request\": {") ||
				!strings.Contains(r.stderr, "dead letter at sequence 2") {
				t.Errorf("show %v: exit %d, decode %v\n%s%s", args, r.code, err, r.stdout, r.stderr)
			}
		}
		// The latest dead letter of a key.
		r := e.run("", "dlq", "show", "dl-a")
		if !strings.Contains(r.stdout, "dl-a-v2") {
			t.Errorf("show dl-a is not the latest:\n%s", r.stdout)
		}
		for _, args := range [][]string{{"no-such-key"}, {"999"}} {
			r := e.run("", append([]string{"dlq", "show"}, args...)...)
			if r.code != exitFailed || !strings.Contains(r.stderr, "no dead letter") {
				t.Errorf("show %v: exit %d\n%s", args, r.code, r.stderr)
			}
		}
	})

	redrive := func(args ...string) result {
		t.Helper()
		return e.run("", append([]string{"dlq", "redrive"}, args...)...)
	}

	t.Run("redrive", func(t *testing.T) {
		// Re-validation rejects the unfixed request: nothing changes.
		r := redrive("--key", "dl-b")
		if r.code != exitFailed || !strings.Contains(r.stdout,
			"skipped seq=2 key=dl-b: re-validation failed: Option.FailureMode: InvalidParameterValue.InvalidRunOption: must be ContinueWhilePossible or NoNewCalls") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		// A bad edit is rejected too.
		r = redrive("--key", "dl-f", "--set", "AccessMode=SHARED")
		if r.code != exitFailed || !strings.Contains(r.stdout, "skipped seq=6 key=dl-f: re-validation failed: AccessMode: InvalidParameterValue: must be PRIVATE or PUBLIC") {
			t.Fatalf("bad edit: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		// A dry run changes nothing.
		r = redrive("--key", "dl-b", "--set", "Option.FailureMode=NoNewCalls", "--dry-run")
		if r.code != exitOK || strings.TrimSpace(r.stdout) != "would redrive seq=2 key=dl-b" {
			t.Fatalf("dry run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if n := len(e.messages(e.topo.RequestsStream)); n != 0 || !slices.Equal(e.dlqSeqs(), []uint64{1, 2, 3, 4, 5, 6, 7, 8}) {
			t.Fatalf("something changed: %d requests, DLQ %v", n, e.dlqSeqs())
		}

		// The fix: republished under the same key, DLQ entry deleted.
		r = redrive("--key", "dl-b", "--set", "Option.FailureMode=NoNewCalls", "--set", `Description="fixed by hand"`)
		if r.code != exitOK || strings.TrimSpace(r.stdout) != "redriven seq=2 key=dl-b" {
			t.Fatalf("redrive: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		msgs := e.messages(e.topo.RequestsStream)
		if len(msgs) != 1 {
			t.Fatalf("%d requests published, want 1", len(msgs))
		}
		m := msgs[0]
		if m.Header.Get(queue.HeaderKey) != "dl-b" || m.Header.Get(queue.HeaderRedriveOf) != "2" || m.Header.Get(queue.HeaderMsgID) != "dl-b/redrive/2" {
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
		r = redrive("--code", notExist)
		if r.code != exitOK || r.stdout != "redriven seq=4 key=dl-a\ndeleted seq=1 key=dl-a: superseded by seq 4\n" {
			t.Fatalf("--code: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		msgs = e.messages(e.topo.RequestsStream)
		if len(msgs) != 2 || !strings.Contains(string(msgs[1].Data), `"Name":"dl-a-v2"`) || msgs[1].Header.Get(queue.HeaderKey) != "dl-a" {
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
			r := redrive(tc.args...)
			if r.code != exitFailed || !strings.Contains(r.stdout, tc.want) {
				t.Errorf("redrive %v: exit %d\n%s%s", tc.args, r.code, r.stdout, r.stderr)
			}
		}
		if got, want := e.dlqSeqs(), []uint64{3, 5, 6, 7, 8}; !slices.Equal(got, want) {
			t.Errorf("DLQ holds %v, want %v", got, want)
		}
		if n := len(e.messages(e.topo.RequestsStream)); n != 2 {
			t.Errorf("%d requests published in total, want 2", n)
		}
	})

	t.Run("redrive all dry run", func(t *testing.T) {
		r := redrive("--all", "--dry-run")
		want := []string{
			"skipped seq=3 key=dl-c: raw (non-JSON) dead letter: nothing to re-validate; fix and republish it by hand",
			"skipped seq=5 key=dl-e: the key already has a result (run group run-e)",
			"would redrive seq=6 key=dl-f",
			"would redrive seq=8 key=dl-g",
			"would delete seq=7 key=dl-g: superseded by seq 8",
		}
		if got := r.lines(); !slices.Equal(got, want) || r.code != exitFailed {
			t.Errorf("exit %d\n got %q\nwant %q", r.code, got, want)
		}
		if got := e.dlqSeqs(); !slices.Equal(got, []uint64{3, 5, 6, 7, 8}) {
			t.Errorf("dry run changed the DLQ: %v", got)
		}
	})
}
