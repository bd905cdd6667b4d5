package operate

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/natstest"
	"github.com/omicsq/omicsq/internal/queue"
)

// breakers returns a Breaker on the env's bucket: what a worker records
// failures with.
func (e *env) breakers(bucket string) *breaker.Breaker {
	e.T.Helper()
	kv, err := e.JS.KeyValue(e.T.Context(), bucket)
	if err != nil {
		e.T.Fatal(err)
	}
	return breaker.New(kv, breaker.Config{Actor: "worker-1"})
}

// trip records n distinct failing keys for r.
func trip(t *testing.T, b *breaker.Breaker, r breaker.Resource, code string, n int) string {
	t.Helper()
	for i := range n {
		if _, err := b.Failed(t.Context(), r, code, fmt.Sprintf("%s-row-%d", r.ID, i)); err != nil {
			t.Fatal(err)
		}
	}
	return breaker.TripID(code, r)
}

func TestBreakerCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	w := e.breakers(e.Topo.BreakerBucket)
	const notExist = "ResourceNotFound.ApplicationNotExist"
	typo := breaker.Resource{Kind: breaker.KindApplication, ID: "app-typo"}
	gone := breaker.Resource{Kind: breaker.KindEnvironment, ID: "env-gone"}
	counting := breaker.Resource{Kind: breaker.KindTable, ID: "tab-1"}
	id := trip(t, w, typo, notExist, 5)
	id2 := trip(t, w, gone, "ResourceNotFound.EnvironmentNotExist", 6)
	trip(t, w, counting, "ResourceNotFound.TableNotExist", 2)

	r := e.run("breaker", "list")
	if r.Code != ExitOK || !strings.Contains(r.Stderr, "3 trips (2 open, 1 closed)") {
		t.Fatalf("list: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	lines := r.Lines()
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID STATE CODE KIND RESOURCE KEYS FIRST FAILURE LAST FAILURE EDITS" {
		t.Fatalf("list:\n%s", r.Stdout)
	}
	row := strings.Fields(lines[1])
	if len(row) != 9 || row[0] != id || row[1] != "open" || row[2] != notExist || row[3] != "ApplicationId" || row[4] != "app-typo" ||
		row[5] != "5" || row[8] != "-" {
		t.Fatalf("row %q", lines[1])
	}
	if _, err := time.Parse(time.RFC3339, row[6]); err != nil {
		t.Errorf("first failure %q: %v", row[6], err)
	}
	// KEYS counts the keys that opened it (the threshold: only that many
	// digests are kept), not the sixth that failed after it opened.
	if f := strings.Fields(lines[2]); f[0] != id2 || f[5] != "5" || !strings.Contains(lines[3], "closed") {
		t.Fatalf("rows:\n%s", r.Stdout)
	}

	// Usage errors change nothing and need no connection.
	for _, args := range [][]string{
		{}, {"frob"}, {"list", "extra"}, {"release"}, {"release", id, id2}, {"release", "not-an-id"},
		{"release", id, "--set", "Name=renamed"}, {"release", id, "--set", "ApplicationId="},
		{"release", id, "--set", "ApplicationId"}, {"release", id, "--set", "ApplicationId=a", "--set", "ApplicationId=b"},
		{"release", id, "--set", "Option.FailureMode=NoNewCalls"}, {"dead-letter", id, "--retention", "0s"},
		{"reset"}, {"list", "--no-such-flag"},
	} {
		r := e.run(append([]string{"breaker"}, args...)...)
		if r.Code != ExitUsage {
			t.Errorf("breaker %q: exit %d, want %d\n%s", args, r.Code, ExitUsage, r.Stderr)
		}
	}
	if r := e.run("breaker", "help"); r.Code != ExitOK || !strings.Contains(r.Stderr, "enqueue breaker release     ID") {
		t.Errorf("help: exit %d\n%s", r.Code, r.Stderr)
	}
	if tr, _ := w.Get(t.Context(), id); tr.State != breaker.Open {
		t.Fatalf("a usage error changed the trip: %+v", tr)
	}

	// Release with the corrected ApplicationId.
	r = e.run("breaker", "release", id, "--set", "ApplicationId=app-correct", "--by", "alice", "--retention", "2h")
	want := "released " + id + " ApplicationId=app-typo code=" + notExist + " keys=5 edits=ApplicationId=app-correct\n"
	if r.Code != ExitOK || r.Stdout != want || !strings.Contains(r.Stderr, "submit the held requests again with ApplicationId=app-correct; kept until") {
		t.Fatalf("release: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	tr, err := w.Get(t.Context(), id)
	if err != nil || tr.State != breaker.Released || tr.Edits["ApplicationId"] != "app-correct" || len(tr.Edits) != 1 ||
		tr.ChangedBy != "alice" || tr.ExpiresAt.Sub(tr.ChangedAt) != 2*time.Hour {
		t.Fatalf("after release: %+v, %v", tr, err)
	}
	// The same again is fine (a JSON string value is unquoted); other
	// edits, or a dead-letter, are refused.
	if r := e.run("breaker", "release", "--set", `ApplicationId="app-correct"`, id); r.Code != ExitOK {
		t.Errorf("the same release again: exit %d\n%s", r.Code, r.Stderr)
	}
	for _, args := range [][]string{{"release", id, "--set", "ApplicationId=app-other"}, {"dead-letter", id}} {
		r := e.run(append([]string{"breaker"}, args...)...)
		if r.Code != ExitFailed || !strings.Contains(r.Stderr, "refused: the trip is not open") {
			t.Errorf("breaker %q: exit %d\n%s", args, r.Code, r.Stderr)
		}
	}

	// A release that sets the tripped field to the value that tripped it.
	same := breaker.Resource{Kind: breaker.KindApplication, ID: "app-same"}
	idSame := trip(t, w, same, notExist, 5)
	if r := e.run("breaker", "release", idSame, "--set", "ApplicationId=app-same"); r.Code != ExitFailed ||
		!strings.Contains(r.Stderr, "refused: invalid edit: ApplicationId is set to the value that tripped") {
		t.Errorf("release to the same value: exit %d\n%s", r.Code, r.Stderr)
	}

	// Dead-letter the other one, then list as JSON.
	r = e.run("breaker", "dead-letter", id2)
	if r.Code != ExitOK || !strings.HasPrefix(r.Stdout, "dead-lettered "+id2+" EnvironmentId=env-gone ") {
		t.Fatalf("dead-letter: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r = e.run("breaker", "list", "--json")
	got := jsonLines[breaker.Trip](t, r.Stdout)
	if r.Code != ExitOK || len(got) != 4 || got[0].ID != idSame || got[1].ID != id || got[1].State != breaker.Released ||
		got[1].Edits["ApplicationId"] != "app-correct" || got[2].State != breaker.DeadLettered || got[3].State != breaker.Closed ||
		!strings.Contains(r.Stderr, "4 trips (1 open, 1 released, 1 dead_lettered, 1 closed)") {
		t.Fatalf("list --json: exit %d %+v\n%s", r.Code, got, r.Stderr)
	}
	if !strings.Contains(r.Stdout, `"resource":{"kind":"ApplicationId","id":"app-typo"}`) {
		t.Errorf("--json layout:\n%s", r.Stdout)
	}

	// Reset forgets a trip whatever its state.
	for _, x := range []string{id, id2} {
		r := e.run("breaker", "reset", x)
		if r.Code != ExitOK || !strings.HasPrefix(r.Stdout, "reset "+x+" ") {
			t.Fatalf("reset %s: exit %d\n%s%s", x, r.Code, r.Stdout, r.Stderr)
		}
		if _, err := w.Get(t.Context(), x); !errors.Is(err, breaker.ErrNotFound) {
			t.Fatalf("after reset: %v", err)
		}
	}
	for _, sub := range []string{"release", "dead-letter", "reset"} {
		r := e.run("breaker", sub, id)
		if r.Code != ExitFailed || !strings.Contains(r.Stderr, "no trip "+id) {
			t.Errorf("%s of a reset trip: exit %d\n%s", sub, r.Code, r.Stderr)
		}
	}
	r = e.run("breaker", "list")
	if r.Code != ExitOK || len(r.Lines()) != 3 || !strings.Contains(r.Stderr, "2 trips (1 open, 1 closed)") {
		t.Fatalf("list after resets: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// The bucket comes from --breaker-bucket or OMICSQ_BREAKER_BUCKET; a
// missing one says who creates it.
func TestBreakerBucket(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	r := e.run("breaker", "list")
	if r.Code != ExitFailed || !strings.Contains(r.Stderr, "bucket OMICSQ_BREAKERS not found: is a worker running?") {
		t.Fatalf("missing bucket: exit %d\n%s", r.Code, r.Stderr)
	}
	if _, err := e.JS.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "OTHER_BREAKERS", History: 1}); err != nil {
		t.Fatal(err)
	}
	r = e.run("breaker", "list", "--breaker-bucket", "OTHER_BREAKERS")
	if r.Code != ExitOK || len(r.Lines()) != 1 || !strings.Contains(r.Stderr, "0 trips") {
		t.Fatalf("empty list: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	id := trip(t, e.breakers("OTHER_BREAKERS"), breaker.Resource{Kind: breaker.KindProject, ID: "proj-x"}, "ResourceNotFound.ProjectNotExist", 5)
	r = runWith(t, map[string]string{"NATS_URL": e.URL, "OMICSQ_BREAKER_BUCKET": "OTHER_BREAKERS", "USER": "bob"}, "breaker", "release", id)
	if r.Code != ExitOK || !strings.Contains(r.Stdout, "edits=-") || !strings.Contains(r.Stderr, "again as they are") {
		t.Fatalf("release from the environment's bucket: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if tr, err := e.breakers("OTHER_BREAKERS").Get(t.Context(), id); err != nil || tr.State != breaker.Released || !strings.HasPrefix(tr.ChangedBy, "bob") {
		t.Fatalf("%+v, %v", tr, err)
	}
	if r := e.run("breaker", "list", "--breaker-bucket", " "); r.Code != ExitUsage {
		t.Fatalf("empty bucket name: exit %d", r.Code)
	}
}

// The permissions docs/enqueue.md gives a breaker operator are enough for
// every breaker command.
func TestBreakerOperatorPermissions(t *testing.T) {
	t.Parallel()
	perms := &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.STREAM.INFO.KV_OMICSQ_BREAKERS", "$JS.API.DIRECT.GET.KV_OMICSQ_BREAKERS.>", "$KV.OMICSQ_BREAKERS.>",
			"$JS.API.CONSUMER.CREATE.KV_OMICSQ_BREAKERS.>", "$JS.API.CONSUMER.DELETE.KV_OMICSQ_BREAKERS.>",
			"$JS.FC.KV_OMICSQ_BREAKERS.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
	ns := natstest.Server(t, &server.Options{Users: []*server.User{
		{Username: "admin", Password: "pw-admin"},
		{Username: "op", Password: "pw-op", Permissions: perms},
	}})
	_, js := natstest.Connect(t, ns, nats.UserInfo("admin", "pw-admin"))
	topo := queue.DefaultTopology()
	if err := queue.Provision(t.Context(), js, topo); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), topo.BreakerBucket)
	if err != nil {
		t.Fatal(err)
	}
	w := breaker.New(kv, breaker.Config{})
	r1 := breaker.Resource{Kind: breaker.KindApplication, ID: "app-typo"}
	r2 := breaker.Resource{Kind: breaker.KindApplication, ID: "app-gone"}
	id1 := trip(t, w, r1, "ResourceNotFound.ApplicationNotExist", 5)
	id2 := trip(t, w, r2, "ResourceNotFound.ApplicationNotExist", 5)
	env := map[string]string{"NATS_URL": ns.ClientURL(), "NATS_USER": "op", "NATS_PASSWORD": "pw-op"}
	for _, args := range [][]string{
		{"list"}, {"list", "--json"}, {"release", id1, "--set", "ApplicationId=app-correct"}, {"dead-letter", id2}, {"reset", id2},
	} {
		r := runWith(t, env, append([]string{"breaker"}, args...)...)
		if r.Code != ExitOK || strings.Contains(r.Stderr, "ermission") {
			t.Fatalf("breaker %q as the operator: exit %d\n%s%s", args, r.Code, r.Stdout, r.Stderr)
		}
	}
	if tr, err := w.Get(t.Context(), id1); err != nil || tr.State != breaker.Released {
		t.Fatalf("%+v, %v", tr, err)
	}
}
