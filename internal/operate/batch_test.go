package operate

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/batch"
)

// seedBatch registers batch id with members a (Failed), b (Succeeded), c
// (dead-lettered) and d (pending), as the tracker and the workers would
// have recorded them; groups names the run groups of a and b.
func seedBatch(t *testing.T, e *env, id string, groups map[string]string, status map[string]string) {
	t.Helper()
	ctx := t.Context()
	cl := client.New(e.JS, client.WithTopology(e.Topo.Topology))
	var ms []client.BatchMember
	for i, k := range []string{"a", "b", "c", "d"} {
		ms = append(ms, client.BatchMember{Key: k, Location: "sheet.csv:row" + string(rune('2'+i))})
	}
	if err := cl.RegisterBatch(ctx, id, ms); err != nil {
		t.Fatal(err)
	}
	kv, err := e.JS.KeyValue(ctx, e.Topo.BatchesBucket)
	if err != nil {
		t.Fatal(err)
	}
	st := &batch.Store{KV: kv}
	for k, g := range groups {
		if _, err := st.UpdateMember(ctx, id, k, func(m *client.BatchMember) bool {
			m.RunGroupID, m.Status, m.Terminal = g, status[k], client.IsTerminalStatus(status[k])
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.DeadLettered(ctx, id, "c", client.ReasonPermanentError); err != nil {
		t.Fatal(err)
	}
}

// enqueue batch show: counts, one line per member in sheet order, the
// --json form; enqueue batch cancel marks the record once.
func TestBatchShowAndCancel(t *testing.T) {
	e := newEnv(t, true)
	seedBatch(t, e, "sheet-1", map[string]string{"a": "rg-a", "b": "rg-b"}, map[string]string{"a": "Failed", "b": "Succeeded"})
	res := e.run("batch", "show", "sheet-1")
	if res.Code != ExitOK {
		t.Fatalf("exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	lines := res.Lines()
	want := []string{
		"batch sheet-1: 4 members registered, 4 recorded, 3 ended",
		"by status: 1 dead_lettered 1 failed 1 pending 1 succeeded; outcomes: 1 succeeded, 1 failed, 1 dead_lettered, 0 cancelled",
	}
	if len(lines) != 7 || !strings.HasPrefix(lines[0], want[0]) || lines[1] != want[1] {
		t.Fatalf("output:\n%s", res.Stdout)
	}
	for i, w := range [][]string{{"LOCATION", "KEY"}, {"sheet.csv:row2", "a", "rg-a", "failed"}, {"sheet.csv:row3", "b", "rg-b", "succeeded"},
		{"sheet.csv:row4", "c", "-", "dead_lettered:permanent_error"}, {"sheet.csv:row5", "d", "-", "pending"}} {
		if f := strings.Fields(lines[2+i]); len(f) < len(w) || strings.Join(f[:len(w)], " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %v", 2+i, lines[2+i], w)
		}
	}
	res = e.run("batch", "show", "--json", "sheet-1")
	var out struct {
		Batch    client.BatchRecord   `json:"batch"`
		ByStatus map[string]int       `json:"by_status"`
		Outcomes map[string]int       `json:"outcomes"`
		Members  []client.BatchMember `json:"members"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil || out.Batch.Members != 4 || len(out.Members) != 4 ||
		out.Outcomes["failed"] != 1 || out.ByStatus["pending"] != 1 {
		t.Fatalf("--json: %v %+v\n%s", err, out, res.Stdout)
	}

	res = e.run("batch", "cancel", "sheet-1")
	if res.Code != ExitOK || !strings.Contains(res.Stdout, "batch sheet-1 cancelled at ") || !strings.Contains(res.Stdout, "1 of 4 members not ended") {
		t.Fatalf("cancel: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	res = e.run("batch", "show", "sheet-1")
	if !strings.Contains(res.Lines()[0], "; cancelled ") {
		t.Errorf("show after cancel: %s", res.Stdout)
	}
	for _, args := range [][]string{{"batch", "show", "no-such"}, {"batch", "cancel", "no-such"}} {
		if res := e.run(args...); res.Code != ExitFailed || !strings.Contains(res.Stderr, "batch not found") {
			t.Errorf("%v: exit %d %s", args, res.Code, res.Stderr)
		}
	}
	for _, args := range [][]string{{"batch", "show"}, {"batch", "show", "a", "b"}, {"batch", "show", "has space"}, {"batch", "frobnicate", "x"}} {
		if res := e.run(args...); res.Code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, res.Code, ExitUsage)
		}
	}
}

// enqueue runs retry --batch retries the batch's Failed members through
// the ordinary retry path, and no other.
func TestRunsRetryBatch(t *testing.T) {
	e := newEnv(t, true)
	sb, addr, api := startSandbox(t)
	ga := failedGroup(t, e.JS, sb, api, "a")
	gb := failedGroup(t, e.JS, sb, api, "b") // failed in the runs bucket, but Succeeded in the batch's view
	seedBatch(t, e, "sheet-2", map[string]string{"a": ga, "b": gb}, map[string]string{"a": "Failed", "b": "Succeeded"})
	vars := map[string]string{"NATS_URL": e.URL, "OMICS_ENDPOINT": addr, "OMICS_INSECURE_HTTP": "true"}
	res := runWith(t, vars, "runs", "retry", "--api-rate", "50", "--batch", "sheet-2")
	if res.Code != ExitOK || len(sb.Retries()[ga]) != 1 || len(sb.Retries()[gb]) != 0 {
		t.Fatalf("exit %d, retries %v\n%s%s", res.Code, sb.Retries(), res.Stdout, res.Stderr)
	}
	if lines := res.Lines(); len(lines) != 1 || !strings.HasPrefix(lines[0], "a retried ") || !strings.Contains(res.Stderr, "batch sheet-2: 1 members ended Failed") {
		t.Errorf("output:\n%s%s", res.Stdout, res.Stderr)
	}
}
