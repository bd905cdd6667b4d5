package operate

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/operate/operatetest"
)

// env is the test bed (an embedded JetStream server, optionally
// provisioned by the worker's own queue.Provision) and a way to run the
// operator commands against it.
type env struct{ *operatetest.Env }

func newEnv(t *testing.T, provision bool) *env { return &env{operatetest.New(t, provision)} }

// run runs an operator command with NATS_URL pointing at the server.
func (e *env) run(args ...string) operatetest.Result {
	e.T.Helper()
	return runWith(e.T, map[string]string{"NATS_URL": e.URL}, args...)
}

// runWith runs an operator command as enqueue does: args[0] is dlq or
// breaker, the rest its arguments.
func runWith(t *testing.T, envVars map[string]string, args ...string) operatetest.Result {
	t.Helper()
	command := map[string]func(context.Context, []string, io.Writer, io.Writer, func(string) string) int{"dlq": DLQ, "breaker": Breaker, "status": Status, "runs": Runs, "batch": Batch}[args[0]]
	return operatetest.Run(t, envVars, func(ctx context.Context, stdout, stderr io.Writer, getenv func(string) string) int {
		return command(ctx, args[1:], stdout, stderr, getenv)
	})
}

// canonical is body as the client publishes it.
func canonical(t *testing.T, body string) []byte {
	t.Helper()
	r, err := client.NewRequest([]byte(body), "k", 0)
	if err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return r.Body
}

// jsonLines decodes the JSON object on each line of out (--json output).
func jsonLines[T any](t *testing.T, out string) []T {
	t.Helper()
	var got []T
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("--json line %q: %v", sc.Text(), err)
		}
		got = append(got, v)
	}
	return got
}
