package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// The tests of the execution model and of DescribeRuns, RetryRuns and
// TerminateRunGroup drive the sandbox over real HTTP with real TC3
// signatures: RunApplication and DescribeRunGroups through the worker's
// client, the other actions through the Tencent SDK's generic client. The
// server clock is injected, so statuses move without sleeping.

// runJSON is a DescribeRuns run decoded with the field names of
// omics-api.md §3.2, independently of the sandbox's own Run type.
type runJSON struct {
	RunUuid, ProjectId, ApplicationId, RunGroupId, EnvironmentId string
	TableId, TableRowUuid, Status, ErrorMessage                  string
	CreateTime, UpdateTime                                       string
	ExecutionTime                                                struct{ SubmitTime, StartTime, EndTime string }
	Cache                                                        struct {
		CacheClearDelay uint64
		CacheClearTime  string
		CacheCleared    bool
	}
}

type describeRunsJSON struct {
	TotalCount uint64
	Runs       []runJSON
}

// execEnv is a sandbox with an injected clock and both clients.
type execEnv struct {
	t     *testing.T
	s     *Server
	addr  string
	clock *fakeClock
	c     *submit.Client
}

func newExecEnv(t *testing.T, opts Options) *execEnv {
	t.Helper()
	clock := newFakeClock(time.Now())
	opts.Now = clock.Now
	opts.MaxSkew = 24 * time.Hour // the clock moves far from the SDK's timestamps
	s, l := startSandbox(t, opts)
	return &execEnv{t: t, s: s, addr: l.Addr(), clock: clock, c: newClient(t, l.Addr(), defaultCred(), 5*time.Second)}
}

// call sends req (marshalled to JSON) as action through the SDK and
// decodes the Response into out. It returns the error code, "" on
// success.
func (e *execEnv) call(action string, req, out any) string {
	e.t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := sdkCall(e.t, e.addr, defaultCred(), action, string(body), sdkOptions{region: testRegion})
	if err != nil {
		return sdkCode(e.t, err)
	}
	if out != nil {
		var env struct{ Response json.RawMessage }
		if err := json.Unmarshal(resp, &env); err != nil {
			e.t.Fatalf("%s: decode %s: %v", action, resp, err)
		}
		if err := json.Unmarshal(env.Response, out); err != nil {
			e.t.Fatalf("%s: decode %s: %v", action, env.Response, err)
		}
	}
	return ""
}

// submit creates a run group named name; rows makes it a table batch.
func (e *execEnv) submit(name string, rows ...string) string {
	e.t.Helper()
	req := runRequest(name)
	if len(rows) > 0 {
		req.TableId, req.TableRowUuids = new("tab-1"), rows
	}
	resp, err := e.c.RunApplication(e.t.Context(), req)
	if err != nil {
		e.t.Fatalf("RunApplication %s: %v", name, err)
	}
	return resp.RunGroupId
}

// group describes one run group through the worker's client.
func (e *execEnv) group(id string) submit.RunGroup {
	e.t.Helper()
	resp, err := e.c.DescribeRunGroups(e.t.Context(), &submit.DescribeRunGroupsRequest{
		Filters: []submit.Filter{{Name: "RunGroupId", Values: []string{id}}},
	})
	if err != nil || len(resp.RunGroups) != 1 {
		e.t.Fatalf("DescribeRunGroups %s: %v, %d groups", id, err, len(resp.RunGroups))
	}
	return resp.RunGroups[0]
}

func (e *execEnv) runs(id string) []runJSON {
	e.t.Helper()
	var out describeRunsJSON
	req := map[string]any{"Limit": 100, "Filters": []map[string]any{{"Name": "RunGroupId", "Values": []string{id}}}}
	if code := e.call(actionDescribeRuns, req, &out); code != "" {
		e.t.Fatalf("DescribeRuns %s: %s", id, code)
	}
	return out.Runs
}

func (e *execEnv) retry(req map[string]any) (string, string) {
	e.t.Helper()
	var out struct{ RunGroupId string }
	code := e.call(actionRetryRuns, req, &out)
	return out.RunGroupId, code
}

func (e *execEnv) terminate(id string) string {
	e.t.Helper()
	return e.call(actionTerminateRunGroup, map[string]any{"RunGroupId": id}, nil)
}

func counts(g submit.RunGroup) map[string]uint64 {
	m := map[string]uint64{}
	for _, c := range g.RunStatusCounts {
		m[c.Status] += c.Count
	}
	return m
}

// TestExecutionLifecycle: a run is Pending for the queue delay, Running
// for its duration, then Succeeded; the group's status, counts, times and
// the Status filter follow from the clock.
func TestExecutionLifecycle(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true, QueueDelay: 10 * time.Second,
		DurationMin: time.Minute, DurationMax: 2 * time.Minute}})
	id := e.submit("lifecycle")
	byStatus := func(status string) []string {
		resp, err := e.c.DescribeRunGroups(t.Context(), &submit.DescribeRunGroupsRequest{
			Filters: []submit.Filter{{Name: "Status", Values: []string{status}}}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, g := range resp.RunGroups {
			ids = append(ids, g.RunGroupId)
		}
		return ids
	}

	g := e.group(id)
	if g.Status != StatusPending || counts(g)[StatusPending] != 1 || g.ExecutionTime.StartTime != "" || g.UpdateTime != g.CreateTime {
		t.Errorf("at creation: %s %v %+v", g.Status, g.RunStatusCounts, g.ExecutionTime)
	}
	e.clock.Advance(10 * time.Second)
	g = e.group(id)
	if g.Status != StatusRunning || counts(g)[StatusRunning] != 1 || g.ExecutionTime.StartTime == "" || g.ExecutionTime.EndTime != "" {
		t.Errorf("after the queue delay: %s %v %+v", g.Status, g.RunStatusCounts, g.ExecutionTime)
	}
	if got := byStatus(StatusRunning); !slices.Equal(got, []string{id}) {
		t.Errorf("Status Running lists %v", got)
	}
	e.clock.Advance(2 * time.Minute)
	g = e.group(id)
	if g.Status != StatusSucceeded || counts(g)[StatusSucceeded] != 1 || g.ExecutionTime.EndTime == "" || g.ErrorMessage != "" ||
		g.UpdateTime != g.ExecutionTime.EndTime {
		t.Errorf("after the duration: %s %v %+v, update %s", g.Status, g.RunStatusCounts, g.ExecutionTime, g.UpdateTime)
	}
	if got := byStatus(StatusSucceeded); !slices.Equal(got, []string{id}) || len(byStatus(StatusPending)) != 0 {
		t.Errorf("Status Succeeded lists %v", got)
	}
	runs := e.runs(id)
	if len(runs) != 1 || runs[0].Status != StatusSucceeded || runs[0].RunGroupId != id || runs[0].TableRowUuid != "" ||
		runs[0].ExecutionTime.EndTime != g.ExecutionTime.EndTime || len(runs[0].RunUuid) != 36 {
		t.Errorf("runs = %+v", runs)
	}
}

// TestExecutionOffByDefault: without Execution, groups and runs stay
// Pending however much time passes, as before the model existed.
func TestExecutionOffByDefault(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{})
	id := e.submit("idle")
	e.clock.Advance(time.Hour)
	if g := e.group(id); g.Status != StatusPending || g.UpdateTime != g.CreateTime || g.ExecutionTime.StartTime != "" {
		t.Errorf("group = %s, update %s, %+v", g.Status, g.UpdateTime, g.ExecutionTime)
	}
	if runs := e.s.Runs(id); len(runs) != 1 || runs[0].Status != StatusPending {
		t.Errorf("Runs = %+v", runs)
	}
	if e.s.Runs("run-none") != nil {
		t.Error("Runs of an unknown group is not nil")
	}
}

// TestExecutionFailures: the failure rate decides outcomes, failed runs
// and groups carry one of the configured messages, and the draws are the
// same for the same seed.
func TestExecutionFailures(t *testing.T) {
	t.Parallel()
	messages := []string{"OOMKilled: exit 137", "disk quota exceeded"}
	outcomes := func() []string {
		e := newExecEnv(t, Options{Seed: 7, Execution: Execution{Enabled: true, DurationMin: time.Second,
			FailureRate: 0.5, FailureMessages: messages}})
		var out []string
		var ids []string
		for i := range 40 {
			ids = append(ids, e.submit(fmt.Sprintf("f-%d", i)))
		}
		e.clock.Advance(time.Second)
		seen := map[string]bool{}
		for _, id := range ids {
			g := e.group(id)
			switch g.Status {
			case StatusFailed:
				if !slices.Contains(messages, g.ErrorMessage) {
					t.Errorf("failed group %s: ErrorMessage %q", id, g.ErrorMessage)
				}
				seen[g.ErrorMessage] = true
			case StatusSucceeded:
				if g.ErrorMessage != "" {
					t.Errorf("succeeded group %s: ErrorMessage %q", id, g.ErrorMessage)
				}
			default:
				t.Errorf("group %s: status %s after its duration", id, g.Status)
			}
			out = append(out, g.Status)
		}
		if len(seen) != len(messages) {
			t.Errorf("messages used: %v, want all of %v", seen, messages)
		}
		return out
	}
	first, second := outcomes(), outcomes()
	failed := 0
	for _, s := range first {
		if s == StatusFailed {
			failed++
		}
	}
	if failed < 8 || failed > 32 {
		t.Errorf("%d of 40 runs failed at rate 0.5", failed)
	}
	if !slices.Equal(first, second) {
		t.Errorf("the same seed gave different outcomes:\n%v\n%v", first, second)
	}
}

// TestExecutionBatchRuns: a table batch has one run per TableRowUuid; the
// group's counts aggregate the runs, and it is Failed if any run failed.
func TestExecutionBatchRuns(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Seed: 3, Execution: Execution{Enabled: true, DurationMin: time.Second,
		DurationMax: time.Minute, FailureRate: 0.3}})
	rows := []string{"row-a", "row-b", "row-c", "row-d", "row-e", "row-f"}
	id := e.submit("batch", rows...)
	// No queue delay: every run starts at once.
	if g := e.group(id); g.TotalRun != 6 || g.Status != StatusRunning || counts(g)[StatusRunning] != 6 {
		t.Errorf("at creation: TotalRun %d, %s, counts %v", g.TotalRun, g.Status, g.RunStatusCounts)
	}
	e.clock.Advance(30 * time.Second)
	g, runs := e.group(id), e.runs(id)
	if len(runs) != 6 {
		t.Fatalf("%d runs, want 6", len(runs))
	}
	got := map[string]uint64{}
	for i, r := range runs {
		if r.TableRowUuid != rows[i] || r.TableId != "tab-1" || r.RunGroupId != id {
			t.Errorf("run %d = %+v", i, r)
		}
		got[r.Status]++
	}
	if c := counts(g); !mapsEqual(c, got) {
		t.Errorf("group counts %v, runs %v", c, got)
	}
	e.clock.Advance(time.Minute)
	g, runs = e.group(id), e.runs(id)
	failed := 0
	for _, r := range runs {
		if r.Status == StatusFailed {
			failed++
		}
	}
	want := StatusSucceeded
	if failed > 0 {
		want = StatusFailed
	}
	if g.Status != want || counts(g)[StatusFailed] != uint64(failed) || g.ExecutionTime.EndTime == "" {
		t.Errorf("ended: status %s counts %v, %d failed runs", g.Status, g.RunStatusCounts, failed)
	}
	if failed == 0 || failed == 6 {
		t.Logf("seed gave %d failed runs of 6: the mixed case is not exercised", failed)
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestDescribeRuns: paging (Limit at most 100, Offset), the filters, the
// project scope and the parameter errors.
func TestDescribeRuns(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{})
	var ids []string
	for g := range 3 {
		rows := make([]string, 40)
		for i := range rows {
			rows[i] = fmt.Sprintf("g%d-row-%02d", g, i)
		}
		ids = append(ids, e.submit(fmt.Sprintf("runs-%d", g), rows...))
	}
	e.s.SetRunGroupStatus(ids[1], StatusRunning)
	describe := func(req map[string]any) describeRunsJSON {
		t.Helper()
		var out describeRunsJSON
		if code := e.call(actionDescribeRuns, req, &out); code != "" {
			t.Fatalf("DescribeRuns %v: %s", req, code)
		}
		return out
	}
	byName := func(name string, values ...string) []map[string]any {
		return []map[string]any{{"Name": name, "Values": values}}
	}

	var all []runJSON
	for offset := 0; offset < 150; offset += 100 {
		page := describe(map[string]any{"Limit": 100, "Offset": offset})
		if page.TotalCount != 120 {
			t.Fatalf("TotalCount %d, want 120", page.TotalCount)
		}
		all = append(all, page.Runs...)
	}
	if len(all) != 120 || all[0].TableRowUuid != "g0-row-00" || all[119].TableRowUuid != "g2-row-39" {
		t.Fatalf("paged %d runs, first %s, last %s", len(all), all[0].TableRowUuid, all[len(all)-1].TableRowUuid)
	}
	if page := describe(map[string]any{}); len(page.Runs) != 10 {
		t.Errorf("default Limit: %d runs, want 10", len(page.Runs))
	}
	if page := describe(map[string]any{"Filters": byName("RunGroupId", ids[2], ids[0]), "Limit": 100}); page.TotalCount != 80 ||
		page.Runs[0].RunGroupId != ids[0] || page.Runs[40].RunGroupId != ids[2] {
		t.Errorf("RunGroupId filter: TotalCount %d", page.TotalCount)
	}
	if page := describe(map[string]any{"Filters": byName("Status", StatusRunning), "Limit": 100}); page.TotalCount != 40 ||
		page.Runs[0].RunGroupId != ids[1] {
		t.Errorf("Status filter: TotalCount %d", page.TotalCount)
	}
	if page := describe(map[string]any{"Filters": byName("RunUuid", all[77].RunUuid)}); page.TotalCount != 1 || page.Runs[0] != all[77] {
		t.Errorf("RunUuid filter = %+v", page.Runs)
	}
	// Filters are AND-ed.
	if page := describe(map[string]any{"Filters": append(byName("RunUuid", all[0].RunUuid), byName("RunGroupId", ids[1])...)}); page.TotalCount != 0 {
		t.Errorf("contradictory filters matched %d runs", page.TotalCount)
	}
	if page := describe(map[string]any{"ProjectId": "prj-other"}); page.TotalCount != 0 {
		t.Errorf("another project lists %d runs", page.TotalCount)
	}
	for name, req := range map[string]map[string]any{
		"Limit 101":      {"Limit": 101},
		"Limit 0":        {"Limit": 0},
		"Name filter":    {"Filters": byName("Name", "runs-0")},
		"empty values":   {"Filters": byName("Status")},
		"empty project":  {"ProjectId": ""},
		"unknown filter": {"Filters": byName("Colour", "x")},
	} {
		if code := e.call(actionDescribeRuns, req, nil); code != codeInvalidParameterValue {
			t.Errorf("%s: code %q, want %s", name, code, codeInvalidParameterValue)
		}
	}
	if code := e.call(actionDescribeRuns, map[string]any{"Limt": 1}, nil); code != codeUnknownParameter {
		t.Errorf("misspelt key: code %q", code)
	}
}

// TestRetryRuns: RetryRuns creates exactly one new group per call from the
// failed runs, records where it came from, and answers its documented
// errors.
func TestRetryRuns(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true, DurationMin: time.Minute, FailureRate: 1, RetryLimit: 2}})
	src := e.submit("retry", "row-1", "row-2", "row-3")
	runs := e.runs(src)

	if _, code := e.retry(map[string]any{"RunGroupId": src}); code != codeStatusNotSupported {
		t.Errorf("retry of a running group: %q, want %s", code, codeStatusNotSupported)
	}
	e.clock.Advance(time.Minute)
	for name, tc := range map[string]struct {
		req  map[string]any
		want string
	}{
		"no RunGroupId":   {map[string]any{}, codeMissingParameter},
		"unknown group":   {map[string]any{"RunGroupId": "run-none"}, codeRunGroupNotExist},
		"other project":   {map[string]any{"RunGroupId": src, "ProjectId": "prj-other"}, codeRunGroupNotExist},
		"unknown run":     {map[string]any{"RunGroupId": src, "RunUuids": []string{"nope"}}, codeRunNotExist},
		"unknown key":     {map[string]any{"RunGroupId": src, "Name": "x"}, codeUnknownParameter},
		"bad FailureMode": {map[string]any{"RunGroupId": src, "WDLOption": map[string]any{"FailureMode": "Never"}}, codeInvalidRunOption},
	} {
		if _, code := e.retry(tc.req); code != tc.want {
			t.Errorf("%s: code %q, want %s", name, code, tc.want)
		}
	}
	if n := e.s.Stats().RetryGroupsCreated; n != 0 {
		t.Fatalf("refused retries created %d groups", n)
	}

	// Two of the three failed rows, with new options.
	r1, code := e.retry(map[string]any{"RunGroupId": src, "RunUuids": []string{runs[2].RunUuid, runs[0].RunUuid},
		"WDLOption": map[string]any{"FailureMode": "ContinueWhilePossible"}})
	if code != "" || r1 == src {
		t.Fatalf("RetryRuns: %q %q", r1, code)
	}
	g := e.group(r1)
	if g.TotalRun != 2 || g.Status != StatusRunning || g.Name != "retry" || *g.Option.FailureMode != "ContinueWhilePossible" {
		t.Errorf("retry group = %+v", g)
	}
	if rr := e.runs(r1); len(rr) != 2 || rr[0].TableRowUuid != "row-3" || rr[1].TableRowUuid != "row-1" || rr[0].RunUuid == runs[2].RunUuid {
		t.Errorf("retry runs = %+v", rr)
	}
	// The lineage: r1 → r2 is the second retry in a row, the limit.
	e.clock.Advance(time.Minute)
	r2, code := e.retry(map[string]any{"RunGroupId": r1})
	if code != "" {
		t.Fatalf("retry of the retry: %s", code)
	}
	e.clock.Advance(time.Minute)
	if _, code := e.retry(map[string]any{"RunGroupId": r2}); code != codeRetryLimitExceeded {
		t.Errorf("third retry in a row: %q, want %s", code, codeRetryLimitExceeded)
	}

	groups := e.s.RunGroups()
	if len(groups) != 3 || groups[1].RetriedFrom != src || groups[2].RetriedFrom != r1 || groups[0].RetriedFrom != "" {
		t.Errorf("registry lineage: %v", groups)
	}
	want := map[string][]string{src: {r1}, r1: {r2}}
	got := e.s.Retries()
	if len(got) != 2 || !slices.Equal(got[src], want[src]) || !slices.Equal(got[r1], want[r1]) {
		t.Errorf("Retries() = %v, want %v", got, want)
	}
	if st := e.s.Stats(); st.RetryGroupsCreated != 2 || st.RetriedGroups != 2 || st.MaxRetryGroupsPerGroup != 1 || st.RunGroupsCreated != 3 {
		t.Errorf("stats: %d retry groups from %d, max %d, %d created", st.RetryGroupsCreated, st.RetriedGroups,
			st.MaxRetryGroupsPerGroup, st.RunGroupsCreated)
	}
}

// TestRetryRunsNothingToRetry: a group whose runs all succeeded, or a
// succeeded run named explicitly, cannot be retried.
func TestRetryRunsNothingToRetry(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true}})
	id := e.submit("fine")
	e.clock.Advance(time.Millisecond)
	if _, code := e.retry(map[string]any{"RunGroupId": id}); code != codeStatusNotSupported {
		t.Errorf("retry of a succeeded group: %q", code)
	}
	if _, code := e.retry(map[string]any{"RunGroupId": id, "RunUuids": []string{e.runs(id)[0].RunUuid}}); code != codeStatusNotSupported {
		t.Errorf("retry of a succeeded run: %q", code)
	}
	// SetRunGroupStatus makes the runs Failed, so they can be retried.
	e.s.SetRunGroupStatus(id, StatusFailed)
	if _, code := e.retry(map[string]any{"RunGroupId": id}); code != "" {
		t.Errorf("retry of a group set to Failed: %q", code)
	}
}

// TestRetryRunsCommitThenFail: RetryRuns has no idempotency token. With
// commit-then-fail the new group is created behind a failed answer, and a
// caller that simply calls again creates a second one, which the
// registry shows.
func TestRetryRunsCommitThenFail(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true, FailureRate: 1}})
	src := e.submit("ctf")
	e.clock.Advance(time.Millisecond)
	if err := e.s.SetFaults(Faults{CommitThenFailP: 1, CommitThenFailModes: []CommitFailMode{CommitFailDrop},
		Actions: []string{actionRetryRuns}}); err != nil {
		t.Fatal(err)
	}
	if _, code := e.retry(map[string]any{"RunGroupId": src}); code != "ClientError.NetworkError" {
		t.Fatalf("RetryRuns: code %q, want the dropped connection", code)
	}
	st := e.s.Stats()
	if got := e.s.Retries()[src]; len(got) != 1 || st.RetryGroupsCreated != 1 || st.FaultsInjected.CommitThenFail[CommitFailDrop] != 1 ||
		st.Actions[actionRetryRuns].Calls[outcomeCommitPrefix+string(CommitFailDrop)] != 1 {
		t.Fatalf("after commit-then-fail: retries %v, stats %+v", got, st)
	}
	if _, code := e.retry(map[string]any{"RunGroupId": src}); code == "" {
		t.Fatal("the faults stopped applying")
	}
	if st := e.s.Stats(); len(e.s.Retries()[src]) != 2 || st.MaxRetryGroupsPerGroup != 2 {
		t.Errorf("a blind second call: %v, max %d; want 2 groups from one source", e.s.Retries()[src], st.MaxRetryGroupsPerGroup)
	}
}

// TestTerminateRunGroup: the runs that have not ended become Terminated;
// the group then is Terminated (or Failed if a run had failed); a second
// call, an unknown group and a missing ID are refused.
func TestTerminateRunGroup(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true, QueueDelay: time.Second, DurationMin: time.Minute}})
	running, idle := e.submit("running", "row-1", "row-2"), e.submit("idle")
	e.clock.Advance(2 * time.Second)
	queued := e.submit("queued") // Pending for another second

	if code := e.terminate(running); code != "" {
		t.Fatalf("TerminateRunGroup: %s", code)
	}
	g := e.group(running)
	if g.Status != StatusTerminated || counts(g)[StatusTerminated] != 2 || g.ExecutionTime.StartTime == "" || g.ExecutionTime.EndTime == "" {
		t.Errorf("terminated group: %s %v %+v", g.Status, g.RunStatusCounts, g.ExecutionTime)
	}
	if code := e.terminate(queued); code != "" {
		t.Fatalf("TerminateRunGroup of a Pending group: %s", code)
	}
	e.clock.Advance(time.Hour) // nothing runs after termination
	if rr := e.runs(queued); rr[0].Status != StatusTerminated || rr[0].ExecutionTime.StartTime != "" {
		t.Errorf("terminated before starting: %+v", rr[0])
	}
	if g := e.group(running); g.Status != StatusTerminated {
		t.Errorf("an hour later: %s", g.Status)
	}
	if g := e.group(idle); g.Status != StatusSucceeded {
		t.Errorf("untouched group: %s", g.Status)
	}
	for name, tc := range map[string]struct {
		req  map[string]any
		want string
	}{
		"again":         {map[string]any{"RunGroupId": running}, codeStatusNotSupported},
		"succeeded":     {map[string]any{"RunGroupId": idle}, codeStatusNotSupported},
		"unknown":       {map[string]any{"RunGroupId": "run-none"}, codeRunNotExist},
		"other project": {map[string]any{"RunGroupId": queued, "ProjectId": "prj-other"}, codeRunNotExist},
		"missing":       {map[string]any{}, codeMissingParameter},
		"unknown key":   {map[string]any{"RunGroupId": queued, "Force": true}, codeUnknownParameter},
	} {
		if code := e.call(actionTerminateRunGroup, tc.req, nil); code != tc.want {
			t.Errorf("%s: code %q, want %s", name, code, tc.want)
		}
	}
	// Terminated runs may be retried.
	if _, code := e.retry(map[string]any{"RunGroupId": running}); code != "" {
		t.Errorf("retry of a terminated group: %s", code)
	}
}

// TestTerminateWithoutExecution: with the model off, a Pending group and a
// group set to Running by SetRunGroupStatus can be terminated.
func TestTerminateWithoutExecution(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{})
	pending, running := e.submit("p"), e.submit("r")
	e.s.SetRunGroupStatus(running, StatusRunning)
	for _, id := range []string{pending, running} {
		if code := e.terminate(id); code != "" {
			t.Fatalf("TerminateRunGroup: %s", code)
		}
		if g := e.group(id); g.Status != StatusTerminated {
			t.Errorf("group %s: %s, want Terminated", id, g.Status)
		}
	}
}

// TestRunActionsRateLimit: each new action has its own window, like
// RunApplication and DescribeRunGroups.
func TestRunActionsRateLimit(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Rate: 2}) // the clock stands still
	id := e.submit("rl")
	for _, action := range []string{actionDescribeRuns, actionRetryRuns, actionTerminateRunGroup} {
		for i := range 3 {
			req := map[string]any{"RunGroupId": "run-none"}
			if action == actionDescribeRuns {
				req = map[string]any{}
			}
			code := e.call(action, req, nil)
			throttled := code == codeRequestLimitExceeded
			if throttled != (i == 2) {
				t.Errorf("%s call %d: code %q", action, i+1, code)
			}
		}
	}
	st := e.s.Stats()
	for _, action := range []string{actionDescribeRuns, actionRetryRuns, actionTerminateRunGroup} {
		if a := st.Actions[action]; a.Admitted != 2 || a.Throttled != 1 || a.MaxAdmitted1s != 2 {
			t.Errorf("%s: admitted %d, throttled %d, max %d", action, a.Admitted, a.Throttled, a.MaxAdmitted1s)
		}
	}
	// DescribeRunGroups still has its own window.
	if _, err := e.c.DescribeRunGroups(t.Context(), nil); err != nil {
		t.Errorf("DescribeRunGroups after the run actions: %v (group %s)", err, id)
	}
}

// TestExecutionOverHTTP: GET and PUT /sandbox/execution, the execution and
// retry figures of /sandbox/stats, /sandbox/retries and RetriedFrom in
// /sandbox/run-groups.
func TestExecutionOverHTTP(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{})
	base := "http://" + e.addr + "/sandbox/"
	var got Execution
	if raw := getJSON(t, base+"execution", &got); !bytes.Equal(raw, []byte(
		`{"enabled":false,"failure_rate":0,"retry_limit":0,"queue_delay":"0s","duration_min":"0s","duration_max":"0s"}`)) {
		t.Errorf("default execution = %s", raw)
	}
	code, body := put(t, base+"execution", `{"enabled":true,"queue_delay":"1s","duration_min":"2s","duration_max":"3s",`+
		`"failure_rate":1,"failure_messages":["boom"],"retry_limit":1}`)
	want := Execution{Enabled: true, QueueDelay: time.Second, DurationMin: 2 * time.Second, DurationMax: 3 * time.Second,
		FailureRate: 1, FailureMessages: []string{"boom"}, RetryLimit: 1}
	if got := e.s.Execution(); code != http.StatusOK || !reflect.DeepEqual(got, want) {
		t.Fatalf("PUT execution: %d %s; now %+v", code, body, got)
	}
	for _, bad := range []string{`{"enable":true}`, `{"queue_delay":"soon"}`, `{"failure_rate":2}`,
		`{"duration_min":"2s","duration_max":"1s"}`, `{"retry_limit":-1}`, `{"queue_delay":"-1s"}`} {
		if code, body := put(t, base+"execution", bad); code != http.StatusBadRequest {
			t.Errorf("PUT execution %s: %d %s, want 400", bad, code, body)
		}
	}

	src := e.submit("http")
	e.clock.Advance(5 * time.Second)
	if g := e.group(src); g.Status != StatusFailed || g.ErrorMessage != "boom" {
		t.Fatalf("group after PUT: %s %q", g.Status, g.ErrorMessage)
	}
	r1, code2 := e.retry(map[string]any{"RunGroupId": src})
	if code2 != "" {
		t.Fatal(code2)
	}
	var retries map[string][]string
	getJSON(t, base+"retries", &retries)
	if len(retries) != 1 || !slices.Equal(retries[src], []string{r1}) {
		t.Errorf("retries = %v", retries)
	}
	var groups []struct{ RunGroupId, RetriedFrom, Status string }
	getJSON(t, base+"run-groups", &groups)
	if len(groups) != 2 || groups[1].RunGroupId != r1 || groups[1].RetriedFrom != src || groups[0].RetriedFrom != "" {
		t.Errorf("run-groups = %+v", groups)
	}
	var st Stats
	raw := getJSON(t, base+"stats", &st)
	if st.RetryGroupsCreated != 1 || st.MaxRetryGroupsPerGroup != 1 || !st.Execution.Enabled ||
		!bytes.Contains(raw, []byte(`"retry_groups_created":1`)) || !bytes.Contains(raw, []byte(`"queue_delay":"1s"`)) {
		t.Errorf("stats = %s", raw)
	}
}

func TestExecutionValidate(t *testing.T) {
	t.Parallel()
	for name, x := range map[string]Execution{
		"negative queue delay": {QueueDelay: -1},
		"negative duration":    {DurationMin: -1},
		"max below min":        {DurationMin: 2, DurationMax: 1},
		"failure rate above 1": {FailureRate: 1.5},
		"failure rate NaN":     {FailureRate: math.NaN()},
		"negative retry limit": {RetryLimit: -1},
	} {
		if err := x.Validate(); err == nil {
			t.Errorf("%s: Validate() accepted %+v", name, x)
		}
		if _, err := New(Options{Execution: x}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetExecution(Execution{FailureRate: -1}); err == nil || s.Execution().FailureRate != 0 {
		t.Errorf("SetExecution(FailureRate -1) = %v", err)
	}
}

// TestRunActionsConcurrent: listing, retrying and terminating at once is
// race-free (run with -race) and every RetryRuns success is one group.
func TestRunActionsConcurrent(t *testing.T) {
	t.Parallel()
	e := newExecEnv(t, Options{Execution: Execution{Enabled: true, FailureRate: 1, RetryLimit: 100}})
	src := e.submit("conc", "a", "b")
	live := e.submit("live")
	e.s.SetRunGroupStatus(live, StatusRunning)
	e.clock.Advance(time.Millisecond)
	var wg sync.WaitGroup
	var ok atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			for range 10 {
				switch w {
				case 0:
					if _, code := e.retry(map[string]any{"RunGroupId": src}); code == "" {
						ok.Add(1)
					}
				case 1:
					e.terminate(live)
				case 2:
					e.call(actionDescribeRuns, map[string]any{"Limit": 100}, nil)
				default:
					e.call(actionDescribeRunGroups, map[string]any{"Filters": []map[string]any{{"Name": "Status", "Values": []string{StatusFailed}}}}, nil)
				}
			}
		})
	}
	wg.Wait()
	if got := len(e.s.Retries()[src]); int64(got) != ok.Load() || got != 10 {
		t.Errorf("%d retry groups for %d successful RetryRuns, want 10", got, ok.Load())
	}
}
