package operate

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
)

// status publishes a run-group status event the way the tracker does.
func (e *env) status(key, status, message string) {
	e.T.Helper()
	ctx := e.T.Context()
	if _, err := e.JS.Stream(ctx, e.Topo.StatusStream); errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := e.JS.CreateStream(ctx, jetstream.StreamConfig{Name: e.Topo.StatusStream, Subjects: []string{e.Topo.StatusPrefix + ".>"}}); err != nil {
			e.T.Fatal(err)
		}
	}
	ev := client.StatusEvent{Key: key, RunGroupID: "rg-" + key, Status: status, Terminal: client.IsTerminalStatus(status),
		ErrorMessage: message, ObservedAt: time.Now().UTC()}
	b, _ := json.Marshal(ev)
	m := nats.NewMsg(e.Topo.StatusGroupSubject(key))
	m.Data = b
	m.Header.Set(client.HeaderMsgID, client.StatusMsgID(ev))
	if _, err := e.JS.PublishMsg(ctx, m); err != nil {
		e.T.Fatal(err)
	}
}

func (e *env) result(key string) {
	e.T.Helper()
	if _, err := queue.PublishResult(e.T.Context(), e.JS, e.Topo, client.Result{Key: key, RunGroupID: "rg-" + key}); err != nil {
		e.T.Fatal(err)
	}
}

func TestStatusReportsEachPhase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	for _, k := range []string{"ok", "bad", "live", "new"} {
		e.result(k)
	}
	e.status("ok", "Running", "")
	e.status("ok", "Succeeded", "")
	e.status("bad", "Failed", "task align: exit code 137 (out of memory)")
	e.status("live", "Running", "")
	e.deadLetter("dead", "dead-1", "permanent_error", "ResourceNotFound.ApplicationNotExist", "", `{"Name":"x"}`, "")

	r := e.run("status", "ok", "bad", "live", "new", "dead", "never")
	want := []string{
		"ok succeeded rg-ok Succeeded",
		"bad failed rg-bad Failed: task align: exit code 137 (out of memory)",
		"live running rg-live Running",
		"new submitted rg-new",
		"dead dead_lettered permanent_error ResourceNotFound.ApplicationNotExist (enqueue dlq show 1)",
		"never pending",
	}
	if got := r.Lines(); strings.Join(got, "\n") != strings.Join(want, "\n") || r.Code != ExitFailed {
		t.Fatalf("exit %d, lines\n%s\nwant\n%s\nstderr: %s", r.Code, r.Stdout, strings.Join(want, "\n"), r.Stderr)
	}
	if !strings.Contains(r.Stderr, "1 pending 1 dead_lettered 1 submitted 1 running 1 succeeded 1 failed") {
		t.Errorf("summary: %s", r.Stderr)
	}
	if r := e.run("status", "ok"); r.Code != ExitOK {
		t.Errorf("all succeeded: exit %d", r.Code)
	}
	if r := e.run("status", "live"); r.Code != exitUnfinished {
		t.Errorf("one running: exit %d, want %d", r.Code, exitUnfinished)
	}
}

func TestStatusReadsSampleSheets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	dir := t.TempDir()
	sheet := filepath.Join(dir, "s.jsonl")
	body := `{"key":"sheet-1","request":{"ApplicationId":"a","EnvironmentId":"e","Name":"n1","InputBase64":"e30="}}` + "\n" +
		`{"key":"sheet-2","request":{"ApplicationId":"a","EnvironmentId":"e","Name":"n2","InputBase64":"e30="}}` + "\n"
	if err := os.WriteFile(sheet, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	e.result("sheet-1")
	e.status("sheet-1", "Succeeded", "")
	r := e.run("status", sheet)
	if r.Stdout != "sheet-1 succeeded rg-sheet-1 Succeeded\nsheet-2 pending\n" || r.Code != exitUnfinished {
		t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := e.run("status"); r.Code != ExitUsage {
		t.Errorf("no arguments: exit %d", r.Code)
	}
	if r := e.run("status", "has space"); r.Code != ExitUsage || !strings.Contains(r.Stderr, "neither a file nor a key") {
		t.Errorf("bad key: exit %d %s", r.Code, r.Stderr)
	}
}
