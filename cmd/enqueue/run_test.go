package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/operate/operatetest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

// env is the test bed (an embedded JetStream server, optionally
// provisioned by the worker's own queue.Provision) and a way to run enqueue
// against it.
type env struct{ *operatetest.Env }

func newEnv(t *testing.T, provision bool) *env { return &env{operatetest.New(t, provision)} }

// run runs enqueue with NATS_URL pointing at the server.
func (e *env) run(stdin string, args ...string) operatetest.Result {
	e.T.Helper()
	return runWith(e.T, map[string]string{"NATS_URL": e.URL}, stdin, args...)
}

func runWith(t *testing.T, envVars map[string]string, stdin string, args ...string) operatetest.Result {
	t.Helper()
	return operatetest.Run(t, envVars, func(ctx context.Context, stdout, stderr io.Writer, getenv func(string) string) int {
		return run(ctx, args, strings.NewReader(stdin), stdout, stderr, getenv)
	})
}

// worker is a stand-in for the real worker: a NATS participant on the
// shared durable consumer that answers every request with a result, or a
// dead letter when its Name starts with "fail-".
type worker struct {
	mu   sync.Mutex
	errs []error
	cc   jetstream.ConsumeContext
}

func (e *env) startWorker() *worker {
	e.T.Helper()
	cons, err := e.JS.Consumer(e.T.Context(), e.Topo.RequestsStream, e.Topo.Consumer)
	if err != nil {
		e.T.Fatal(err)
	}
	w := &worker{}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key := m.Headers().Get(client.HeaderKey)
		md, _ := m.Metadata()
		req, verr := submit.DecodeRunApplication(m.Data(), submit.DefaultLimits())
		var err error
		if verr != nil || strings.HasPrefix(req.Name, "fail-") {
			err = queue.PublishDeadLetter(ctx, e.JS, e.Topo, client.DeadLetter{
				Key: key, Request: json.RawMessage(m.Data()), Reason: "permanent_error",
				Error:    client.Failure{Class: "permanent", Code: "ResourceNotFound.ApplicationNotExist", Message: "the application (ApplicationId) does not exist"},
				Attempts: 1, Deliveries: 1, FailedAt: time.Now().UTC(), Worker: "fake", StreamSequence: md.Sequence.Stream,
			}, fmt.Sprintf("%s/%d", key, md.Sequence.Stream))
		} else {
			_, err = queue.PublishResult(ctx, e.JS, e.Topo, client.Result{Key: key, RunGroupID: "run-" + client.KeyToken(key)[:12],
				Attempts: 1, SubmittedAt: time.Now().UTC(), Worker: "fake"})
		}
		if err == nil {
			err = m.Ack()
		}
		if err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, err)
			w.mu.Unlock()
		}
	})
	if err != nil {
		e.T.Fatal(err)
	}
	w.cc = cc
	e.T.Cleanup(w.stop)
	return w
}

func (w *worker) stop() {
	w.cc.Stop()
	<-w.cc.Closed()
}

func (w *worker) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, err := range w.errs {
		t.Errorf("fake worker: %v", err)
	}
}

var publishedLine = regexp.MustCompile(`^(\S+) (\S+) (published|duplicate)$`)

func TestPublishAndDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	r := e.run("", "../../examples/seed-examples.json")
	if r.Code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	keys := map[string]string{} // location -> key
	for _, l := range r.Lines() {
		m := publishedLine.FindStringSubmatch(l)
		if m == nil || m[3] != "published" {
			t.Fatalf("unexpected line %q", l)
		}
		keys[m[1]] = m[2]
	}
	p := samplesheet.NewParser(samplesheet.Options{Limits: submit.DefaultLimits()})
	data, err := os.ReadFile("../../examples/seed-examples.json")
	if err != nil {
		t.Fatal(err)
	}
	items, errs := p.Parse("../../examples/seed-examples.json", "", data, samplesheet.FormatAuto)
	if len(errs) != 0 || len(items) != 2 {
		t.Fatalf("parse: %d items, errors %v", len(items), errs)
	}
	msgs := e.Messages(e.Topo.RequestsStream)
	if len(msgs) != 2 {
		t.Fatalf("requests stream holds %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		it := items[i]
		if keys[it.Loc.String()] != it.Key {
			t.Errorf("%s printed key %q, want %q", it.Loc, keys[it.Loc.String()], it.Key)
		}
		if m.Subject != e.Topo.RequestsSubject || m.Header.Get(client.HeaderKey) != it.Key || m.Header.Get(client.HeaderMsgID) != it.Key {
			t.Errorf("message %d: subject %q key %q msg id %q, want %q and %q", i, m.Subject,
				m.Header.Get(client.HeaderKey), m.Header.Get(client.HeaderMsgID), e.Topo.RequestsSubject, it.Key)
		}
		want := canonical(t, string(it.Body))
		if !bytes.Equal(m.Data, want) {
			t.Errorf("message %d body\n got %s\nwant %s", i, m.Data, want)
		}
		if it.Key != client.DeriveKey(m.Data) {
			t.Errorf("message %d: key is not derived from the published body", i)
		}
	}

	// The same file again: same keys, dropped as duplicates.
	r2 := e.run("", "../../examples/seed-examples.json")
	if r2.Code != exitOK {
		t.Fatalf("second run: exit %d\n%s", r2.Code, r2.Stderr)
	}
	for _, l := range r2.Lines() {
		m := publishedLine.FindStringSubmatch(l)
		if m == nil || m[3] != "duplicate" || keys[m[1]] != m[2] {
			t.Errorf("second run: unexpected line %q", l)
		}
	}
	if n := len(e.Messages(e.Topo.RequestsStream)); n != 2 {
		t.Errorf("after the second run the stream holds %d messages, want 2", n)
	}
	if !strings.Contains(r2.Stderr, "0 published, 2 duplicates") {
		t.Errorf("second run summary: %s", r2.Stderr)
	}
}

func TestInvalidInputPublishesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	r := e.run("", "../../examples/invalid.jsonl", "../../examples/seed-examples.json")
	if r.Code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s", r.Code, exitFailed, r.Stderr)
	}
	if n := len(e.Messages(e.Topo.RequestsStream)); n != 0 {
		t.Fatalf("%d messages published from an invalid run", n)
	}
	for i := 1; i <= 12; i++ {
		if !strings.Contains(r.Stderr, fmt.Sprintf("examples/invalid.jsonl:%d: ", i)) {
			t.Errorf("stderr lacks an error for line %d", i)
		}
	}
	if !strings.Contains(r.Stderr, "12 of 14 requests are invalid; nothing was published") || r.Stdout != "" {
		t.Errorf("stdout %q\nstderr %s", r.Stdout, r.Stderr)
	}

	// --publish-valid publishes the valid ones and still fails.
	stdin := `{` + base + `,"Name":"ok-1"}` + "\n" + `{` + base + `}` + "\n"
	r = e.run(stdin, "--publish-valid", "--format", "jsonl", "-")
	if r.Code != exitFailed {
		t.Fatalf("--publish-valid: exit %d, want %d\n%s", r.Code, exitFailed, r.Stderr)
	}
	if !strings.Contains(r.Stderr, "stdin:2: Name: MissingParameter") || !strings.HasPrefix(r.Stdout, "stdin:1 ") {
		t.Errorf("--publish-valid output:\nstdout %s\nstderr %s", r.Stdout, r.Stderr)
	}
	if n := len(e.Messages(e.Topo.RequestsStream)); n != 1 {
		t.Errorf("--publish-valid published %d messages, want 1", n)
	}
}

func TestMissingStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	r := e.run("", "../../examples/seed-examples.json")
	if r.Code != exitFailed || !strings.Contains(r.Stderr, "stream OMICSQ_REQUESTS not found: is a worker running? (it creates the streams)") {
		t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
	}
	r = e.run("", "dlq", "list")
	if r.Code != exitFailed || !strings.Contains(r.Stderr, "stream OMICSQ_DLQ not found: is a worker running?") {
		t.Fatalf("dlq list: exit %d\n%s", r.Code, r.Stderr)
	}
	names := e.JS.StreamNames(t.Context())
	for name := range names.Name() {
		t.Errorf("enqueue created stream %s", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	dir := t.TempDir()
	for name, body := range map[string]string{
		"a.json": `{"wf.sample": "A"}`, "b.json": `{"wf.sample": "B"}`, "c.json": `{"wf.sample": "C"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sheet := filepath.Join(dir, "sheet.csv")
	csvData := "Name,input_json,UseCallCache\nwait-a,a.json,true\nfail-b,b.json,\nwait-c,c.json,false\n"
	if err := os.WriteFile(sheet, []byte(csvData), 0o600); err != nil {
		t.Fatal(err)
	}
	w := e.startWorker()
	r := e.run("", "--wait", "--timeout", "30s", "--application-id", "app-1", "--environment-id", "env-1", sheet)
	w.check(t)
	if r.Code != exitFailed {
		t.Fatalf("exit %d, want %d (one dead letter)\nstdout:\n%s\nstderr:\n%s", r.Code, exitFailed, r.Stdout, r.Stderr)
	}
	resolved := map[string]string{}
	for _, l := range r.Lines() {
		f := strings.Fields(l)
		if len(f) >= 3 && (f[2] == "run-group" || f[2] == "dead-letter") {
			resolved[f[0]] = l
		}
	}
	for row, want := range map[string]string{
		"row2": " run-group run-", "row3": " dead-letter ResourceNotFound.ApplicationNotExist: the application (ApplicationId) does not exist", "row4": " run-group run-",
	} {
		if l := resolved[sheet+":"+row]; !strings.Contains(l, want) {
			t.Errorf("%s: line %q, want it to contain %q", row, l, want)
		}
	}
	if !strings.Contains(r.Stderr, "wait: 2 succeeded, 1 dead-lettered") {
		t.Errorf("summary missing:\n%s", r.Stderr)
	}

	// Re-run with the worker stopped: the results already exist and are
	// found by direct get; the dead letter predates this run, so that
	// request stays pending (its republish was a duplicate) and the wait
	// times out.
	w.stop()
	r = e.run("", "--wait", "--timeout", "1s", "--application-id", "app-1", "--environment-id", "env-1", sheet)
	if r.Code != exitTimeout {
		t.Fatalf("re-run: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.Code, exitTimeout, r.Stdout, r.Stderr)
	}
	for _, want := range []string{sheet + ":row2 ", sheet + ":row4 "} {
		if !strings.Contains(r.Stdout, want) || !regexp.MustCompile(regexp.QuoteMeta(want)+`\S+ run-group run-`).MatchString(r.Stdout) {
			t.Errorf("re-run: no run-group line for %s:\n%s", want, r.Stdout)
		}
	}
	if !regexp.MustCompile(regexp.QuoteMeta(sheet+":row3 ") + `\S+ pending \(a dead letter from before this run exists: enqueue dlq show \d+\)`).MatchString(r.Stdout) {
		t.Errorf("re-run: row3 should be pending with a hint:\n%s", r.Stdout)
	}
	if !strings.Contains(r.Stderr, "wait: 2 succeeded, 0 dead-lettered, 1 pending after 1s") {
		t.Errorf("re-run summary:\n%s", r.Stderr)
	}
}

func TestWaitAllSucceed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	w := e.startWorker()
	r := e.run("", "--wait", "--quiet", "../../examples/seed-examples.json")
	w.check(t)
	if r.Code != exitOK || r.Stdout != "" || !strings.Contains(r.Stderr, "wait: 2 succeeded, 0 dead-lettered") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if n := len(e.Messages(e.Topo.ResultsStream)); n != 2 {
		t.Errorf("results stream holds %d results, want 2", n)
	}
}

func TestWaitTimeoutWithoutWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	r := e.run("", "--wait", "--timeout", "300ms", "../../examples/tencent-docs/singleton.json")
	if r.Code != exitTimeout || !strings.Contains(r.Stdout, " pending") || !strings.Contains(r.Stderr, "1 pending after 300ms") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
}

func TestProgressOnLargeInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	var b strings.Builder
	const n = 1001
	for i := range n {
		fmt.Fprintf(&b, `{`+base+`,"Name":"bulk-%04d"}`+"\n", i)
	}
	r := e.run(b.String(), "-")
	if r.Code != exitOK {
		t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
	}
	if got := len(r.Lines()); got != n {
		t.Errorf("%d output lines, want %d", got, n)
	}
	if !strings.Contains(r.Stderr, "enqueue: published 1000 of 1001") {
		t.Errorf("no progress line:\n%s", r.Stderr)
	}
	if got := len(e.Messages(e.Topo.RequestsStream)); got != n {
		t.Errorf("stream holds %d messages, want %d", got, n)
	}
}

func TestUsageAndOfflineModes(t *testing.T) {
	t.Parallel()
	// Nothing listens here: a dry run must not need a server.
	off := map[string]string{"NATS_URL": "nats://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no files", nil, exitUsage, "no input files"},
		{"bad format", []string{"--format", "xml", "x.json"}, exitUsage, "--format must be auto, json, jsonl or csv"},
		{"bad timeout", []string{"--wait", "--timeout", "0s", "x.json"}, exitUsage, "--timeout must be positive"},
		{"stdin twice", []string{"-", "-"}, exitUsage, "standard input (-) can be read only once"},
		{"missing file", []string{"nope.json"}, exitUsage, "read nope.json"},
		{"help", []string{"--help"}, exitOK, "Usage: enqueue"},
		{"dry run valid", []string{"--dry-run", "../../examples/samples.csv"}, exitOK, "dry run: 20 valid, 0 invalid"},
		{"dry run invalid", []string{"../../examples/invalid.jsonl", "--dry-run"}, exitFailed, "dry run: 0 valid, 12 invalid"},
		{"no server", []string{"--connect-timeout", "300ms", "../../examples/seed-examples.json"}, exitFailed, "no connection to nats://127.0.0.1:1"},
		{"dlq without command", []string{"dlq"}, exitUsage, "Usage:"},
		{"dlq unknown command", []string{"dlq", "purge"}, exitUsage, `unknown command "purge"`},
		{"redrive without selection", []string{"dlq", "redrive"}, exitUsage, "select with exactly one of --all"},
		{"redrive all and key", []string{"dlq", "redrive", "--all", "--key", "k"}, exitUsage, "select with exactly one of --all"},
		{"redrive bad set", []string{"dlq", "redrive", "--all", "--set", "Nmae=x"}, exitUsage, "Nmae is not a RunApplication field"},
		{"show nothing", []string{"dlq", "show"}, exitUsage, "give a KEY or SEQ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runWith(t, off, "{}", tc.args...)
			if r.Code != tc.code || !strings.Contains(r.Stdout+r.Stderr, tc.want) {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant %q", r.Code, tc.code, r.Stdout, r.Stderr, tc.want)
			}
		})
	}
}

func TestEnvironmentSecretsAreNotEchoed(t *testing.T) {
	t.Parallel()
	r := runWith(t, map[string]string{"NATS_URL": "nats://127.0.0.1:1", "OMICSQ_MAX_MESSAGE_BYTES": "s3cret-value"}, "", "x.json")
	if r.Code != exitUsage || strings.Contains(r.Stderr, "s3cret-value") || !strings.Contains(r.Stderr, "OMICSQ_MAX_MESSAGE_BYTES") {
		t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
	}
	r = runWith(t, map[string]string{"NATS_URL": "nats://alice:pw-s3cret@127.0.0.1:1"}, "",
		"--connect-timeout", "200ms", "../../examples/tencent-docs/singleton.json")
	if r.Code != exitFailed || strings.Contains(r.Stderr, "pw-s3cret") || strings.Contains(r.Stderr, "alice") {
		t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
	}
}

// Flags and files interleave; the environment presets the flags, which
// override it; the subject flag is spelled --subject.
func TestParseRunArgs(t *testing.T) {
	t.Parallel()
	getenv := func(k string) string {
		return map[string]string{"OMICSQ_REQUESTS_SUBJECT": "env.req", "OMICSQ_DLQ_PREFIX": "env.dlq"}[k]
	}
	c, _, files, code := parseRunArgs([]string{"a.json", "--wait", "-", "--dlq-prefix", "flag.dlq", "--", "--not-a-flag"}, io.Discard, getenv)
	if c == nil || c.wait != waitSubmitted || c.Topo.RequestsSubject != "env.req" || c.Topo.DLQPrefix != "flag.dlq" || strings.Join(files, " ") != "a.json - --not-a-flag" {
		t.Fatalf("exit %d, config %+v, files %q", code, c, files)
	}
	c, _, _, _ = parseRunArgs([]string{"--subject", "x.y", "a.json"}, io.Discard, getenv)
	if c == nil || c.Topo.RequestsSubject != "x.y" {
		t.Errorf("--subject: %+v", c)
	}
}

func TestWaitModes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want waitMode
	}{
		{[]string{"a.json"}, waitNone},
		{[]string{"--wait", "a.json"}, waitSubmitted},
		{[]string{"--wait=submitted", "a.json"}, waitSubmitted},
		{[]string{"--wait=completed", "a.json"}, waitCompleted},
		{[]string{"--wait=false", "a.json"}, waitNone},
	} {
		c, _, _, code := parseRunArgs(tc.args, io.Discard, func(string) string { return "" })
		if c == nil {
			t.Errorf("%q: exit %d", tc.args, code)
		} else if c.wait != tc.want {
			t.Errorf("%q: wait %q, want %q", tc.args, c.wait, tc.want)
		}
	}
	if c, _, _, code := parseRunArgs([]string{"--wait=done", "a.json"}, io.Discard, func(string) string { return "" }); c != nil || code != exitUsage {
		t.Errorf("--wait=done: exit %d, want %d", code, exitUsage)
	}
}
