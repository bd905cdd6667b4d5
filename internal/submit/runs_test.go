package submit

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/sandbox"
)

// runsEnv is the sandbox with its execution model on, over real HTTP, and
// this package's client for it.
type runsEnv struct {
	t  *testing.T
	sb *sandbox.Server
	c  *Client
}

func newRunsEnv(t *testing.T, exec sandbox.Execution) *runsEnv {
	t.Helper()
	sb, err := sandbox.New(sandbox.Options{Execution: exec, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(t.Context(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	c, err := New(Config{Region: testRegion, Endpoint: ln.Addr(), InsecureHTTP: true, Timeout: 5 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	return &runsEnv{t: t, sb: sb, c: c}
}

func (e *runsEnv) submit(name string, rows ...string) string {
	e.t.Helper()
	req := requestNamed(name, "runs test")
	if len(rows) > 0 {
		req.TableId, req.TableRowUuids = new("tab-1"), rows
	}
	resp, err := e.c.RunApplication(e.t.Context(), req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.RunGroupId
}

func (e *runsEnv) runsOf(ids ...string) *DescribeRunsResponse {
	e.t.Helper()
	limit := uint64(100)
	resp, err := e.c.DescribeRuns(e.t.Context(), &DescribeRunsRequest{
		Filters: []Filter{{Name: "RunGroupId", Values: ids}}, Limit: &limit,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// DescribeRuns decodes every documented field the sandbox fills, lists the
// runs of several groups with one filter, and reports per-run status and
// error messages once runs end.
func TestDescribeRunsAgainstSandbox(t *testing.T) {
	e := newRunsEnv(t, sandbox.Execution{Enabled: true, DurationMin: 50 * time.Millisecond,
		FailureRate: 1, FailureMessages: []string{"exit 137"}})
	single := e.submit("runs-single")
	batch := e.submit("runs-batch", "row-1", "row-2", "row-3")

	resp := e.runsOf(single, batch)
	if resp.TotalCount != 4 || len(resp.Runs) != 4 || resp.RequestId == "" {
		t.Fatalf("DescribeRuns: total %d, %d runs, request id %q; want 4, 4, set", resp.TotalCount, len(resp.Runs), resp.RequestId)
	}
	rows := map[string]bool{}
	for _, r := range resp.Runs {
		if r.RunUuid == "" || r.ProjectId == "" || r.ApplicationId != "app-1" || r.EnvironmentId != "env-1" ||
			r.ExecutionTime == nil || r.ExecutionTime.SubmitTime == "" || r.CreateTime == "" || r.Cache == nil {
			t.Errorf("run decoded incompletely: %+v", r)
		}
		if r.RunGroupId == batch {
			rows[r.TableRowUuid] = true
			if r.TableId != "tab-1" {
				t.Errorf("batch run TableId %q", r.TableId)
			}
		}
	}
	if len(rows) != 3 {
		t.Errorf("batch rows %v; want row-1..3", rows)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		resp = e.runsOf(batch)
		done := 0
		for _, r := range resp.Runs {
			if strings.EqualFold(r.Status, sandbox.StatusFailed) && r.ErrorMessage == "exit 137" &&
				r.ExecutionTime.EndTime != "" {
				done++
			}
		}
		if done == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch runs did not all fail with their message: %+v", resp.Runs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RetryRuns answers a new RunGroupId; TerminateRunGroup stops a running
// group; their refusals are classified like every other answer.
func TestRetryRunsAndTerminateRunGroup(t *testing.T) {
	e := newRunsEnv(t, sandbox.Execution{Enabled: true, DurationMin: 500 * time.Millisecond, FailureRate: 1})
	failed := e.submit("retry-me")
	if _, err := e.c.RetryRuns(t.Context(), &RetryRunsRequest{RunGroupId: failed}); ClassOf(err) != ClassPermanent {
		// Still running: the sandbox refuses with StatusNotSupported.
		t.Fatalf("RetryRuns of a running group: %v; want a permanent error", err)
	}
	time.Sleep(800 * time.Millisecond)
	resp, err := e.c.RetryRuns(t.Context(), &RetryRunsRequest{RunGroupId: failed})
	if err != nil {
		t.Fatal(err)
	}
	if resp.RunGroupId == "" || resp.RunGroupId == failed || resp.RequestId == "" {
		t.Fatalf("RetryRuns answer %+v", resp)
	}
	if got := e.sb.Retries()[failed]; len(got) != 1 || got[0] != resp.RunGroupId {
		t.Fatalf("sandbox retries of %s: %v; want [%s]", failed, got, resp.RunGroupId)
	}

	if err := e.sb.SetExecution(sandbox.Execution{Enabled: true, QueueDelay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	pending := e.submit("terminate-me")
	if _, err := e.c.TerminateRunGroup(t.Context(), &TerminateRunGroupRequest{RunGroupId: pending}); err != nil {
		t.Fatal(err)
	}
	if runs := e.runsOf(pending).Runs; len(runs) != 1 || !strings.EqualFold(runs[0].Status, sandbox.StatusTerminated) {
		t.Fatalf("after TerminateRunGroup: %+v", runs)
	}
	_, err = e.c.TerminateRunGroup(t.Context(), &TerminateRunGroupRequest{RunGroupId: pending})
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Action != "TerminateRunGroup" || apiErr.Code != "FailedOperation.StatusNotSupported" ||
		apiErr.Class != ClassPermanent {
		t.Fatalf("second TerminateRunGroup: %v; want a permanent FailedOperation.StatusNotSupported", err)
	}
	_, err = e.c.TerminateRunGroup(t.Context(), &TerminateRunGroupRequest{RunGroupId: "run-unknown-000000"})
	if e, ok := errors.AsType[*Error](err); !ok || e.Code != "ResourceNotFound.RunNotExist" || e.Class != ClassPermanent {
		t.Fatalf("TerminateRunGroup of an unknown group: %v", err)
	}
}

// The required RunGroupId is checked before anything is sent.
func TestRunActionsRequireRunGroupID(t *testing.T) {
	c := newTestClient(t, "127.0.0.1:1", time.Second)
	if _, err := c.RetryRuns(t.Context(), &RetryRunsRequest{}); ClassOf(err) != ClassPermanent {
		t.Errorf("RetryRuns without RunGroupId: %v", err)
	}
	if _, err := c.TerminateRunGroup(t.Context(), nil); ClassOf(err) != ClassPermanent {
		t.Errorf("TerminateRunGroup(nil): %v", err)
	}
}
