package operate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/ratelimit"
	"github.com/omicsq/omicsq/internal/rerun"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/settings"
	"github.com/omicsq/omicsq/internal/submit"
)

const runsUsage = `Usage: enqueue runs retry [flags] KEY|FILE...
       enqueue runs retry [flags] --batch ID [KEY|FILE...]

Retries the failed run group of each request with RetryRuns: a new run group re-executes
its failed and terminated runs, with the call cache on (--call-cache) for a WDL group, and
the run tracker follows it under the same key (enqueue status KEY shows it). An argument
that names a file is read as a sample sheet and stands for the keys of its requests; any
other is a key. --batch ID stands for the members of the batch whose run group ended
Failed (enqueue batch show ID lists them; a Terminated one counts as cancelled, retry
it by key). A key is retried only if its current run group ended Failed or
Terminated: once retried, its current group is the new one, so running the command again
creates nothing more. RetryRuns has no idempotency token: after an unknown outcome
(a timeout, a 502) the new group is looked up by Name, for up to --lookup-horizon, before
any other call (see docs/lifecycle.md, "Retrying failed runs"). Tencent Cloud credentials
come from the environment, as for the worker.

Prints per key: retried (the new group), found (the outcome was unknown; the new group
was found by Name), already (a group had been created from it already), refused (and
why), busy (another retry of the key is running) or unresolved (stopped while a group
may exist: run the command again to go on).

Exit status: 0 every key has its retry group; 1 any key was refused, busy or
unresolved, or an error; 64 usage error.

`

// runs is a parsed enqueue runs command line.
type runs struct {
	c                       *Config
	defaults                samplesheet.Defaults
	endpoint, region, by    string
	insecure, callCache     bool
	asJSON                  bool
	timeout, horizon        time.Duration
	rate                    float64
	keys                    []string
	runsBucket, retryBucket string
	batch                   string
}

// Runs runs enqueue runs (args are those after "runs"): retry failed run
// groups. It returns the exit status.
func Runs(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	r := &runs{c: NewConfig()}
	return command{"enqueue runs", runsUsage, []string{"retry"}, r.c, r}.run(ctx, args, stdout, stderr, getenv)
}

func (r *runs) flags(string) []settings.Setting {
	t := queue.DefaultTopology()
	user := os.Getenv("USER")
	return slices.Concat(r.c.ConnFlags(), r.c.LimitFlags(),
		settings.API(&r.endpoint, &r.insecure, &r.region, &r.timeout),
		[]settings.Setting{
			settings.Row("runs-bucket", "OMICSQ_RUNS_BUCKET", "KV bucket of the tracker (the key's current run group)", settings.String(&r.runsBucket, t.RunsBucket)),
			settings.Row("retries-bucket", "OMICSQ_RETRIES_BUCKET", "KV bucket of the retries (the intent before each call)", settings.String(&r.retryBucket, t.RetriesBucket)),
			settings.Row("call-cache", "", "turn UseCallCache on for a WDL group (its options are sent back with it); a Nextflow group keeps its own options", settings.Bool(&r.callCache, true)),
			settings.Row("lookup-horizon", "OMICSQ_LOOKUP_HORIZON", "after an unknown outcome, how long lookups by Name go on before the call may be made again (the worker's setting)", settings.Duration(&r.horizon, rerun.DefaultHorizon)),
			settings.Row("api-rate", "", "this command's API calls per second per action (RetryRuns, DescribeRunGroups), kept small beside the fleet's", settings.Float(&r.rate, 2)),
			settings.Row("by", "", "who asks, recorded with the retry", settings.String(&r.by, "enqueue:"+user)),
			settings.Row("json", "", "print one JSON object per key", settings.Bool(&r.asJSON, false)),
			settings.Row("batch", "", "retry the members of this batch whose run group ended Failed", settings.String(&r.batch, "")),
			settings.Row("batches-bucket", "OMICSQ_BATCHES_BUCKET", "KV bucket of the batches (with --batch)", settings.String(&r.c.Topo.BatchesBucket, t.BatchesBucket)),
			settings.Row("application-id", "OMICSQ_APPLICATION_ID", "CSV: ApplicationId for rows without one", settings.String(&r.defaults.ApplicationID, "")),
			settings.Row("environment-id", "OMICSQ_ENVIRONMENT_ID", "CSV: EnvironmentId for rows without one", settings.String(&r.defaults.EnvironmentID, "")),
			settings.Row("project-id", "OMICSQ_PROJECT_ID", "CSV: ProjectId for rows without one", settings.String(&r.defaults.ProjectID, "")),
		})
}

// check resolves the arguments to keys; a --batch is resolved to its
// failed members' keys once connected (run).
func (r *runs) check(_ string, pos []string) error {
	switch {
	case len(pos) == 0 && r.batch == "":
		return errors.New("give one or more KEYs or FILEs, or --batch ID")
	case r.batch != "" && client.ValidateBatch(r.batch) != nil:
		return fmt.Errorf("--batch: %v", client.ValidateBatch(r.batch))
	case strings.TrimSpace(r.runsBucket) == "" || strings.TrimSpace(r.retryBucket) == "":
		return errors.New("--runs-bucket and --retries-bucket must not be empty")
	case r.horizon < time.Second:
		return errors.New("--lookup-horizon must be at least 1s")
	case r.timeout < time.Second:
		return errors.New("--api-timeout must be at least 1s")
	case !(r.rate > 0):
		return errors.New("--api-rate must be above 0")
	}
	var err error
	r.keys, err = statusKeys(r.c, r.defaults, pos)
	return err
}

func (r *runs) run(ctx context.Context, _ string, s *Session, stdout, stderr io.Writer) int {
	const name = "enqueue runs retry"
	for _, b := range []string{r.runsBucket, r.retryBucket} {
		if _, err := s.bucket(ctx, b); err != nil {
			return failed(stderr, name, err)
		}
	}
	if r.batch != "" {
		keys, err := BatchFailedKeys(ctx, s.Client, r.batch)
		if err != nil {
			return failed(stderr, name, fmt.Errorf("batch: %w", err))
		}
		fmt.Fprintf(stderr, "%s: batch %s: %d members ended Failed\n", name, Printable(r.batch), len(keys))
		r.keys = append(r.keys, keys...)
	}
	cred, err := submit.CredentialFromEnvironment()
	if err != nil {
		return failed(stderr, name, fmt.Errorf("tencent cloud credentials: %w", err))
	}
	api, err := submit.New(submit.Config{Region: r.region, Endpoint: r.endpoint, InsecureHTTP: r.insecure, Timeout: r.timeout, Credential: cred})
	if err != nil {
		return failed(stderr, name, err)
	}
	topo := queue.DefaultTopology()
	topo.Topology = r.c.Topo.Topology
	topo.RunsBucket, topo.RetriesBucket = r.runsBucket, r.retryBucket
	retryLim, describeLim := ratelimit.NewLocal(r.rate, 1), ratelimit.NewLocal(r.rate, 1)
	defer retryLim.Close()
	defer describeLim.Close()
	re, err := rerun.New(ctx, rerun.Config{JS: s.JS, Topology: topo, API: api, RetryLimiter: retryLim, DescribeLimiter: describeLim,
		Horizon: r.horizon, LeaseTTL: max(rerun.DefaultLeaseTTL, 2*r.timeout+time.Minute), Holder: r.by})
	if err != nil {
		return failed(stderr, name, err)
	}
	return r.retryAll(ctx, re, stdout, stderr)
}

// retryAll retries the keys one after another (a retry whose outcome is
// unknown may look up for the whole horizon) and prints each outcome as it
// comes: one line per key, or one JSON object.
func (r *runs) retryAll(ctx context.Context, re *rerun.Retrier, stdout, stderr io.Writer) int {
	progress := func(key, note string) { fmt.Fprintf(stderr, "enqueue runs retry: %s: %s\n", key, note) }
	enc := json.NewEncoder(stdout)
	count := map[rerun.Kind]int{}
	code := ExitOK
	for _, k := range r.keys {
		out, err := re.Retry(ctx, k, rerun.Options{Trigger: rerun.TriggerManual, By: r.by, CallCache: r.callCache, Progress: progress})
		if err != nil {
			fmt.Fprintf(stderr, "enqueue runs retry: %s: %v\n", k, err)
			code = ExitFailed
			if ctx.Err() != nil {
				break
			}
			continue
		}
		count[out.Kind]++
		if out.Kind != rerun.KindCreated && out.Kind != rerun.KindFound && out.Kind != rerun.KindAlready {
			code = ExitFailed
		}
		if r.asJSON {
			_ = enc.Encode(retryJSON(out))
			continue
		}
		fmt.Fprintf(stdout, "%s %s %s from %s: %s\n", k, outcomeWord(out.Kind), orDash(out.NewGroup), orDash(out.SourceGroup), detail(out))
	}
	summary := "enqueue runs retry:"
	for _, kind := range []rerun.Kind{rerun.KindCreated, rerun.KindFound, rerun.KindAlready, rerun.KindRefused, rerun.KindBusy, rerun.KindUnresolved} {
		summary += fmt.Sprintf(" %d %s", count[kind], outcomeWord(kind))
	}
	fmt.Fprintln(stderr, summary)
	return code
}

func outcomeWord(k rerun.Kind) string {
	if k == rerun.KindCreated {
		return "retried"
	}
	return string(k)
}

// detail explains an outcome in words, without request values.
func detail(o rerun.Outcome) string {
	switch o.Kind {
	case rerun.KindFound:
		return "the RetryRuns outcome was unknown (" + o.Code + "); the new group was found by Name"
	case rerun.KindAlready:
		return "a group had been created from it already; it is followed now"
	case rerun.KindRefused:
		switch o.Reason {
		case rerun.ReasonNotEnded:
			return "its run group has not ended (" + orDash(o.Status) + ")"
		case rerun.ReasonSucceeded:
			return "its run group succeeded: nothing to retry"
		case rerun.ReasonNotTracked:
			return "no run group is tracked for it (no result yet, or no worker runs the tracker)"
		case rerun.ReasonAPI:
			return "RetryRuns refused: " + o.Code
		case rerun.ReasonNothingVisible:
			return "no new group became visible within the horizon after the last allowed call (" + o.Code + ")"
		}
		return o.Reason
	}
	return o.Reason
}

// retryJSON is the --json form of an outcome.
func retryJSON(o rerun.Outcome) any {
	return struct {
		Key         string `json:"key"`
		Outcome     string `json:"outcome"`
		RunGroupID  string `json:"run_group_id,omitempty"`
		Source      string `json:"source_run_group_id,omitempty"`
		Reason      string `json:"reason,omitempty"`
		Code        string `json:"code,omitempty"`
		Attempt     int    `json:"attempt,omitempty"`
		GroupStatus string `json:"group_status,omitempty"`
	}{o.Key, outcomeWord(o.Kind), o.NewGroup, o.SourceGroup, o.Reason, o.Code, o.Attempt, o.Status}
}
