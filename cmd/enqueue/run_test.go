package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/logcapture"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

// env is an embedded JetStream server, optionally provisioned by the
// worker's own queue.Provision, and a way to run enqueue against it.
type env struct {
	t    *testing.T
	url  string
	js   jetstream.JetStream
	topo queue.Topology
}

func newEnv(t *testing.T, provision bool) *env {
	t.Helper()
	ns := natstest.Server(t, nil)
	_, js := natstest.Connect(t, ns)
	e := &env{t: t, url: ns.ClientURL(), js: js, topo: queue.DefaultTopology()}
	if provision {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := queue.Provision(ctx, js, e.topo); err != nil {
			t.Fatalf("provision: %v", err)
		}
	}
	return e
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) lines() []string {
	return strings.Split(strings.TrimSpace(r.stdout), "\n")
}

// run runs enqueue with NATS_URL pointing at the server.
func (e *env) run(stdin string, args ...string) result {
	e.t.Helper()
	return runWith(e.t, map[string]string{"NATS_URL": e.url}, stdin, args...)
}

func runWith(t *testing.T, envVars map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut logcapture.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut, func(k string) string { return envVars[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// messages returns every message stored in a stream, in order.
func (e *env) messages(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := e.t.Context()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
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
	e.t.Helper()
	cons, err := e.js.Consumer(e.t.Context(), e.topo.RequestsStream, e.topo.Consumer)
	if err != nil {
		e.t.Fatal(err)
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
			err = queue.PublishDeadLetter(ctx, e.js, e.topo, client.DeadLetter{
				Key: key, Request: json.RawMessage(m.Data()), Reason: "permanent_error",
				Error:    client.Failure{Class: "permanent", Code: "ResourceNotFound.ApplicationNotExist", Message: "the application (ApplicationId) does not exist"},
				Attempts: 1, Deliveries: 1, FailedAt: time.Now().UTC(), Worker: "fake", StreamSequence: md.Sequence.Stream,
			}, fmt.Sprintf("%s/%d", key, md.Sequence.Stream))
		} else {
			_, err = queue.PublishResult(ctx, e.js, e.topo, client.Result{Key: key, RunGroupID: "run-" + client.KeyToken(key)[:12],
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
		e.t.Fatal(err)
	}
	w.cc = cc
	e.t.Cleanup(w.stop)
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
	if r.code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	keys := map[string]string{} // location -> key
	for _, l := range r.lines() {
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
	msgs := e.messages(e.topo.RequestsStream)
	if len(msgs) != 2 {
		t.Fatalf("requests stream holds %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		it := items[i]
		if keys[it.Loc.String()] != it.Key {
			t.Errorf("%s printed key %q, want %q", it.Loc, keys[it.Loc.String()], it.Key)
		}
		if m.Subject != e.topo.RequestsSubject || m.Header.Get(client.HeaderKey) != it.Key || m.Header.Get(client.HeaderMsgID) != it.Key {
			t.Errorf("message %d: subject %q key %q msg id %q, want %q and %q", i, m.Subject,
				m.Header.Get(client.HeaderKey), m.Header.Get(client.HeaderMsgID), e.topo.RequestsSubject, it.Key)
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
	if r2.code != exitOK {
		t.Fatalf("second run: exit %d\n%s", r2.code, r2.stderr)
	}
	for _, l := range r2.lines() {
		m := publishedLine.FindStringSubmatch(l)
		if m == nil || m[3] != "duplicate" || keys[m[1]] != m[2] {
			t.Errorf("second run: unexpected line %q", l)
		}
	}
	if n := len(e.messages(e.topo.RequestsStream)); n != 2 {
		t.Errorf("after the second run the stream holds %d messages, want 2", n)
	}
	if !strings.Contains(r2.stderr, "0 published, 2 duplicates") {
		t.Errorf("second run summary: %s", r2.stderr)
	}
}

func TestInvalidInputPublishesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	r := e.run("", "../../examples/invalid.jsonl", "../../examples/seed-examples.json")
	if r.code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s", r.code, exitFailed, r.stderr)
	}
	if n := len(e.messages(e.topo.RequestsStream)); n != 0 {
		t.Fatalf("%d messages published from an invalid run", n)
	}
	for i := 1; i <= 12; i++ {
		if !strings.Contains(r.stderr, fmt.Sprintf("examples/invalid.jsonl:%d: ", i)) {
			t.Errorf("stderr lacks an error for line %d", i)
		}
	}
	if !strings.Contains(r.stderr, "12 of 14 requests are invalid; nothing was published") || r.stdout != "" {
		t.Errorf("stdout %q\nstderr %s", r.stdout, r.stderr)
	}

	// --publish-valid publishes the valid ones and still fails.
	stdin := `{` + base + `,"Name":"ok-1"}` + "\n" + `{` + base + `}` + "\n"
	r = e.run(stdin, "--publish-valid", "--format", "jsonl", "-")
	if r.code != exitFailed {
		t.Fatalf("--publish-valid: exit %d, want %d\n%s", r.code, exitFailed, r.stderr)
	}
	if !strings.Contains(r.stderr, "stdin:2: Name: MissingParameter") || !strings.HasPrefix(r.stdout, "stdin:1 ") {
		t.Errorf("--publish-valid output:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
	if n := len(e.messages(e.topo.RequestsStream)); n != 1 {
		t.Errorf("--publish-valid published %d messages, want 1", n)
	}
}

func TestMissingStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	r := e.run("", "../../examples/seed-examples.json")
	if r.code != exitFailed || !strings.Contains(r.stderr, "stream OMICSQ_REQUESTS not found: is a worker running? (it creates the streams)") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	r = e.run("", "dlq", "list")
	if r.code != exitFailed || !strings.Contains(r.stderr, "stream OMICSQ_DLQ not found: is a worker running?") {
		t.Fatalf("dlq list: exit %d\n%s", r.code, r.stderr)
	}
	names := e.js.StreamNames(t.Context())
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
	if r.code != exitFailed {
		t.Fatalf("exit %d, want %d (one dead letter)\nstdout:\n%s\nstderr:\n%s", r.code, exitFailed, r.stdout, r.stderr)
	}
	resolved := map[string]string{}
	for _, l := range r.lines() {
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
	if !strings.Contains(r.stderr, "wait: 2 succeeded, 1 dead-lettered") {
		t.Errorf("summary missing:\n%s", r.stderr)
	}

	// Re-run with the worker stopped: the results already exist and are
	// found by direct get; the republish of the dead request is a duplicate
	// acknowledged with the original's sequence, so its dead letter settles
	// it at once instead of leaving it pending until the timeout.
	w.stop()
	r = e.run("", "--wait", "--timeout", "10s", "--application-id", "app-1", "--environment-id", "env-1", sheet)
	if r.code != exitFailed {
		t.Fatalf("re-run: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, exitFailed, r.stdout, r.stderr)
	}
	for _, want := range []string{sheet + ":row2 ", sheet + ":row4 "} {
		if !strings.Contains(r.stdout, want) || !regexp.MustCompile(regexp.QuoteMeta(want)+`\S+ run-group run-`).MatchString(r.stdout) {
			t.Errorf("re-run: no run-group line for %s:\n%s", want, r.stdout)
		}
	}
	if !regexp.MustCompile(regexp.QuoteMeta(sheet+":row3 ") + `\S+ dead-letter ResourceNotFound.ApplicationNotExist`).MatchString(r.stdout) {
		t.Errorf("re-run: row3 should report its dead letter:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "wait: 2 succeeded, 1 dead-lettered") || strings.Contains(r.stderr, "pending") {
		t.Errorf("re-run summary:\n%s", r.stderr)
	}
}

func TestWaitAllSucceed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	w := e.startWorker()
	r := e.run("", "--wait", "--quiet", "../../examples/seed-examples.json")
	w.check(t)
	if r.code != exitOK || r.stdout != "" || !strings.Contains(r.stderr, "wait: 2 succeeded, 0 dead-lettered") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if n := len(e.messages(e.topo.ResultsStream)); n != 2 {
		t.Errorf("results stream holds %d results, want 2", n)
	}
}

func TestWaitTimeoutWithoutWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	r := e.run("", "--wait", "--timeout", "300ms", "../../examples/tencent-docs/singleton.json")
	if r.code != exitTimeout || !strings.Contains(r.stdout, " pending") || !strings.Contains(r.stderr, "1 pending after 300ms") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
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
	if r.code != exitOK {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := len(r.lines()); got != n {
		t.Errorf("%d output lines, want %d", got, n)
	}
	if !strings.Contains(r.stderr, "enqueue: published 1000 of 1001") {
		t.Errorf("no progress line:\n%s", r.stderr)
	}
	if got := len(e.messages(e.topo.RequestsStream)); got != n {
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
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant %q", r.code, tc.code, r.stdout, r.stderr, tc.want)
			}
		})
	}
}

func TestEnvironmentSecretsAreNotEchoed(t *testing.T) {
	t.Parallel()
	r := runWith(t, map[string]string{"NATS_URL": "nats://127.0.0.1:1", "OMICSQ_MAX_MESSAGE_BYTES": "s3cret-value"}, "", "x.json")
	if r.code != exitUsage || strings.Contains(r.stderr, "s3cret-value") || !strings.Contains(r.stderr, "OMICSQ_MAX_MESSAGE_BYTES") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	r = runWith(t, map[string]string{"NATS_URL": "nats://alice:pw-s3cret@127.0.0.1:1"}, "",
		"--connect-timeout", "200ms", "../../examples/tencent-docs/singleton.json")
	if r.code != exitFailed || strings.Contains(r.stderr, "pw-s3cret") || strings.Contains(r.stderr, "alice") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
}

func TestParseFlagsInterspersed(t *testing.T) {
	t.Parallel()
	c := newConfig()
	var wait bool
	fs := newFlagSetForTest()
	pos, err := parseFlags(fs, append(topoFlags(c), flagDef{"wait", "", "", boolFlag(&wait)}),
		[]string{"a.json", "--wait", "-", "--subject", "x.y", "--", "--not-a-flag"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if !wait || c.topo.RequestsSubject != "x.y" || strings.Join(pos, " ") != "a.json - --not-a-flag" {
		t.Errorf("wait %v subject %q positional %q", wait, c.topo.RequestsSubject, pos)
	}
	// The environment presets, flags override.
	c = newConfig()
	pos, err = parseFlags(newFlagSetForTest(), topoFlags(c), []string{"--dlq-prefix", "flag.dlq"},
		func(k string) string {
			return map[string]string{"OMICSQ_REQUESTS_SUBJECT": "env.req", "OMICSQ_DLQ_PREFIX": "env.dlq"}[k]
		})
	if err != nil || len(pos) != 0 || c.topo.RequestsSubject != "env.req" || c.topo.DLQPrefix != "flag.dlq" {
		t.Errorf("err %v subject %q dlq prefix %q", err, c.topo.RequestsSubject, c.topo.DLQPrefix)
	}
}

func newFlagSetForTest() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}
