package operate

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
	"github.com/omicsq/omicsq/internal/tracker"
	"github.com/omicsq/omicsq/sandbox"
)

// failedGroup creates a run group for key in the sandbox, fails it, and
// records it in the runs bucket as the tracker does once it ended.
func failedGroup(t *testing.T, js jetstream.JetStream, sb *sandbox.Server, api *submit.Client, key string) string {
	t.Helper()
	resp, err := api.RunApplication(t.Context(), &submit.RunApplicationRequest{ApplicationId: "app-1", Name: "retry-" + key,
		EnvironmentId: "env-1", InputBase64: new("e30K")})
	if err != nil {
		t.Fatal(err)
	}
	sb.SetRunGroupStatus(resp.RunGroupId, "Failed")
	kv, err := js.KeyValue(t.Context(), queue.DefaultTopology().RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	b, _ := json.Marshal(tracker.Entry{Key: key, RunGroupID: resp.RunGroupId, SubmittedAt: now, RecordedAt: now, UpdatedAt: now,
		Status: "Failed", Terminal: true, Group: tracker.Emitted{Statuses: []string{"failed"}, Seq: 1, Terminal: true}})
	if _, err := kv.Create(t.Context(), client.KeyToken(key), b); err != nil {
		t.Fatal(err)
	}
	return resp.RunGroupId
}

// enqueue runs retry against the sandbox over HTTP, with every RetryRuns
// answer failing after its group was created and lookups lagging: one
// group per key, reported as found; a second run creates none and says why.
func TestRunsRetryCreatesOneGroupPerFailedKey(t *testing.T) {
	e := newEnv(t, true)
	sb, addr, api := startSandbox(t)
	g1 := failedGroup(t, e.JS, sb, api, "lims-A")
	if err := sb.SetFaults(sandbox.Faults{CommitThenFailP: 1, Actions: []string{"RetryRuns"},
		CommitThenFailModes: []sandbox.CommitFailMode{sandbox.CommitFailDrop}}); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetVisibility(sandbox.Visibility{Lag: time.Second}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"NATS_URL": e.URL, "OMICS_ENDPOINT": addr, "OMICS_INSECURE_HTTP": "true",
		"OMICSQ_LOOKUP_HORIZON": "10s"}
	res := runWith(t, vars, "runs", "retry", "--api-rate", "50", "lims-A", "lims-unknown")
	created := sb.Retries()[g1]
	if len(created) != 1 {
		t.Fatalf("the sandbox created %v from %s, want one\n%s%s", created, g1, res.Stdout, res.Stderr)
	}
	if res.Code != ExitFailed {
		t.Errorf("exit %d, want %d (an unknown key)", res.Code, ExitFailed)
	}
	lines := res.Lines()
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "lims-A found "+created[0]+" from "+g1+": ") ||
		!strings.HasPrefix(lines[1], "lims-unknown refused - from -: no run group is tracked") {
		t.Fatalf("output:\n%s", res.Stdout)
	}
	if !strings.Contains(res.Stderr, "looking the new group up by Name") {
		t.Errorf("no progress note on stderr:\n%s", res.Stderr)
	}

	// Again: the key's group is the new one now, which has not ended.
	res = runWith(t, vars, "runs", "retry", "--json", "lims-A")
	outs := jsonLines[map[string]any](t, res.Stdout)
	if res.Code != ExitFailed || len(outs) != 1 || outs[0]["outcome"] != "refused" || outs[0]["reason"] != "not_ended" ||
		outs[0]["source_run_group_id"] != created[0] {
		t.Fatalf("second run: exit %d, %v\n%s", res.Code, outs, res.Stderr)
	}
	if n := len(sb.Retries()[g1]) + len(sb.Retries()[created[0]]); n != 1 {
		t.Fatalf("%d groups after a second run, want 1", n)
	}
}

// startSandbox serves a sandbox over HTTP and returns a client for it.
func startSandbox(t *testing.T) (*sandbox.Server, string, *submit.Client) {
	t.Helper()
	sb, err := sandbox.New(sandbox.Options{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sandbox.Listen(context.Background(), "127.0.0.1:0", sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	api, err := submit.New(submit.Config{Region: "ap-guangzhou", Endpoint: ln.Addr(), InsecureHTTP: true, Timeout: 3 * time.Second,
		Credential: common.NewCredential(sandbox.DefaultSecretID, sandbox.DefaultSecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TENCENTCLOUD_SECRET_ID", sandbox.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", sandbox.DefaultSecretKey)
	return sb, ln.Addr(), api
}

// The permissions docs/enqueue.md gives the operator of runs retry are
// enough.
func TestRunsRetryOperatorPermissions(t *testing.T) {
	perms := &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.STREAM.INFO.KV_OMICSQ_RUNS", "$JS.API.DIRECT.GET.KV_OMICSQ_RUNS.>", "$KV.OMICSQ_RUNS.>",
			"$JS.API.STREAM.INFO.KV_OMICSQ_RETRIES", "$JS.API.DIRECT.GET.KV_OMICSQ_RETRIES.>", "$KV.OMICSQ_RETRIES.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
	ns := natstest.Server(t, &server.Options{Users: []*server.User{
		{Username: "admin", Password: "pw-admin"},
		{Username: "op", Password: "pw-op", Permissions: perms},
	}})
	_, js := natstest.Connect(t, ns, nats.UserInfo("admin", "pw-admin"))
	if err := queue.Provision(t.Context(), js, queue.DefaultTopology()); err != nil {
		t.Fatal(err)
	}
	sb, addr, api := startSandbox(t)
	g1 := failedGroup(t, js, sb, api, "lims-P")
	res := runWith(t, map[string]string{"NATS_URL": ns.ClientURL(), "NATS_USER": "op", "NATS_PASSWORD": "pw-op",
		"OMICS_ENDPOINT": addr, "OMICS_INSECURE_HTTP": "true"}, "runs", "retry", "--api-rate", "50", "lims-P")
	if res.Code != ExitOK || strings.Contains(res.Stderr, "ermission") || len(sb.Retries()[g1]) != 1 {
		t.Fatalf("runs retry as the operator: exit %d, retries %v\n%s%s", res.Code, sb.Retries(), res.Stdout, res.Stderr)
	}
}

func TestRunsRetryUsage(t *testing.T) {
	for _, args := range [][]string{{"runs"}, {"runs", "retry"}, {"runs", "redo", "k"}, {"runs", "retry", "--api-rate", "0", "k"}} {
		if res := runWith(t, nil, args...); res.Code != ExitUsage {
			t.Errorf("%v: exit %d, want %d\n%s", args, res.Code, ExitUsage, res.Stderr)
		}
	}
}
