package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/operate"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/settings"
)

// Exit codes: those of every enqueue command, and of --wait.
const (
	exitOK          = operate.ExitOK
	exitFailed      = operate.ExitFailed // invalid input, a publish or connection error, a dead letter
	exitTimeout     = 2                  // --wait ended with requests still unresolved
	exitUsage       = operate.ExitUsage
	exitInterrupted = 130
)

// progressEvery is how often (in requests) publishing reports progress.
const progressEvery = 1000

// config holds every setting of a publishing run: those every enqueue
// command shares, and publishing's own.
type config struct {
	*operate.Config
	defaults     samplesheet.Defaults
	format       string
	wait         waitMode
	timeout      time.Duration
	publishValid bool
	dryRun       bool
	quiet        bool
	batch        string
	// priority and fairnessKey apply to rows without their own.
	priority    string
	fairnessKey string
}

const enqueueUsage = `Usage: enqueue [flags] FILE...      (FILE "-" reads standard input)
       enqueue dlq list|show|redrive [flags] ...
       enqueue breaker list|release|dead-letter|reset [flags] ...
       enqueue status [flags] KEY|FILE...
       enqueue runs retry [flags] KEY|FILE...|--batch ID
       enqueue batch show|cancel [flags] ID

Validates every run request in the files (JSON object or array, JSON Lines, or a CSV
sample sheet), then publishes them to the omicsq requests stream. Nothing is published
if any request is invalid, unless --publish-valid. See docs/enqueue.md.

Exit status: 0 success; 1 invalid input, an error, a dead letter or (--wait=completed) a
failed run; 2 --wait timed out; 64 usage error.

Every flag can also be set by the environment variable named in its description.

`

// run is the whole program; main only wires the process to it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && args[0] == "dlq" {
		return operate.DLQ(ctx, args[1:], stdout, stderr, getenv)
	}
	if len(args) > 0 && args[0] == "breaker" {
		return operate.Breaker(ctx, args[1:], stdout, stderr, getenv)
	}
	if len(args) > 0 && args[0] == "status" {
		return operate.Status(ctx, args[1:], stdout, stderr, getenv)
	}
	if len(args) > 0 && args[0] == "runs" {
		return operate.Runs(ctx, args[1:], stdout, stderr, getenv)
	}
	if len(args) > 0 && args[0] == "batch" {
		return operate.Batch(ctx, args[1:], stdout, stderr, getenv)
	}
	c, f, files, status := parseRunArgs(args, stderr, getenv)
	if c == nil {
		return status
	}
	items, invalid, err := readInputs(c, f, files, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitUsage
	}
	if status, publish := reportInputs(c, items, invalid, stdout, stderr); !publish {
		return status
	}

	level := slog.LevelWarn
	if c.quiet {
		level = slog.LevelError
	}
	s, err := operate.Connect(ctx, c.Config, stderr, level)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	defer s.Close()
	if err := s.RequireStream(ctx, c.Topo.RequestsStream); err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	// --wait settles a request only by outcomes of this run: a dead letter
	// stored before it (whose republish is a dropped duplicate) leaves the
	// request pending with a hint, as a new dead letter would not come.
	var mark uint64
	if c.wait != waitNone {
		if mark, err = s.Client.DeadLetterMark(ctx); err != nil {
			fmt.Fprintf(stderr, "enqueue: %v\n", err)
			return exitFailed
		}
	}
	if c.batch, err = operate.RegisterSheet(ctx, s, c.Topo.BatchesBucket, c.batch, items, stderr); err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	acks, dups, err := publishAll(ctx, s.Client, c, items, stdout, stderr)
	fmt.Fprintf(stderr, "enqueue: %d published, %d duplicates (already in the stream's de-duplication window)\n", len(acks)-dups, dups)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		again := "run again"
		if c.batch != "" { // the same batch, or its published rows would count in neither
			again = "run again with --batch " + c.batch
		}
		fmt.Fprintf(stderr, "enqueue: %d of %d requests were not published; %s to publish them (published ones are dropped as duplicates)\n",
			len(items)-len(acks), len(items), again)
		return exitFailed
	}
	code := exitOK
	if c.wait != waitNone {
		code = waitFor(ctx, s.Client, c, items, acks, mark, stdout, stderr)
	}
	if len(invalid) > 0 {
		return exitFailed
	}
	return code
}

// parseRunArgs reads the flags and files of a publishing run. Without a
// config, the run is over (--help, or a usage error already printed) with
// exit status code.
func parseRunArgs(args []string, stderr io.Writer, getenv func(string) string) (c *config, f samplesheet.Format, files []string, code int) {
	c = &config{Config: operate.NewConfig()}
	table := slices.Concat(c.ConnFlags(), c.TopoFlags(), c.LimitFlags(), []settings.Setting{
		settings.Row("format", "", "input format: auto (by extension, else by content), json, jsonl or csv", settings.String(&c.format, "auto")),
		settings.Row("wait", "", "wait for each request's RunGroupId or dead letter; --wait=completed: until each run group has a terminal status", c.wait.bind),
		settings.Row("timeout", "", "with --wait: how long to wait after publishing", settings.Duration(&c.timeout, 5*time.Minute)),
		settings.Row("publish-valid", "", "publish the valid requests even if some are invalid (the exit status is still 1)", settings.Bool(&c.publishValid, false)),
		settings.Row("dry-run", "", "validate only; do not connect or publish", settings.Bool(&c.dryRun, false)),
		settings.Row("batch", "OMICSQ_BATCH", "batch ID of this run's requests (enqueue batch show ID); default enqueue-<UTC time>-<6 hex>", settings.String(&c.batch, "")),
		settings.Row("quiet", "", "print only errors, dead letters and summaries (no per-request lines, no progress)", settings.Bool(&c.quiet, false)),
		settings.Row("application-id", "OMICSQ_APPLICATION_ID", "CSV: ApplicationId for rows without one", settings.String(&c.defaults.ApplicationID, "")),
		settings.Row("environment-id", "OMICSQ_ENVIRONMENT_ID", "CSV: EnvironmentId for rows without one", settings.String(&c.defaults.EnvironmentID, "")),
		settings.Row("project-id", "OMICSQ_PROJECT_ID", "CSV: ProjectId for rows without one", settings.String(&c.defaults.ProjectID, "")),
		settings.Row("priority", "OMICSQ_PRIORITY", "lane of requests without a priority column or field: urgent, normal or routine (empty: the bare requests subject, the routine lane's shared flow)", settings.String(&c.priority, "")),
		settings.Row("fairness-key", "OMICSQ_FAIRNESS_KEY", "key the lane is shared fairly by, for requests without a fairness_key column or field (empty: each request's ProjectId)", settings.String(&c.fairnessKey, "")),
	})
	files, err := settings.ParseCommand("enqueue", enqueueUsage, stderr, table, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return nil, "", nil, exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return nil, "", nil, exitUsage
	}
	f, ferr := samplesheet.ParseFormat(c.format)
	verr := c.Validate()
	if ferr != nil {
		verr = errors.Join(verr, fmt.Errorf("--format %w", ferr))
	}
	if c.priority != "" {
		if _, err := client.ParsePriority(c.priority); err != nil {
			verr = errors.Join(verr, fmt.Errorf("--priority: %w", err))
		}
	}
	if len(c.fairnessKey) > client.MaxFairnessKeyBytes {
		verr = errors.Join(verr, fmt.Errorf("--fairness-key: at most %d bytes", client.MaxFairnessKeyBytes))
	}
	if c.wait != waitNone && c.timeout <= 0 {
		verr = errors.Join(verr, errors.New("--timeout must be positive"))
	}
	if len(files) == 0 {
		verr = errors.Join(verr, errors.New("no input files (use - for standard input)"))
	}
	if c.batch == "" {
		c.batch = operate.NewBatchID(time.Now())
	} else if err := client.ValidateBatch(c.batch); err != nil {
		verr = errors.Join(verr, fmt.Errorf("--batch: %w", err))
	}
	if verr != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", strings.ReplaceAll(verr.Error(), "\n", "\nenqueue: "))
		return nil, "", nil, exitUsage
	}
	return c, f, files, exitOK
}

// reportInputs prints the rejected requests and, on a dry run, the valid
// ones. It returns publish false, with the exit status, when nothing is to
// be published.
func reportInputs(c *config, items []item, invalid []*samplesheet.Error, stdout, stderr io.Writer) (code int, publish bool) {
	for _, e := range invalid {
		fmt.Fprintln(stderr, e.Error())
	}
	if c.dryRun {
		if !c.quiet {
			for _, it := range items {
				fmt.Fprintf(stdout, "%s %s valid\n", it.Loc, it.Key)
			}
		}
		fmt.Fprintf(stderr, "enqueue: dry run: %d valid, %d invalid\n", len(items), len(invalid))
		if len(invalid) > 0 {
			return exitFailed, false
		}
		return exitOK, false
	}
	if len(invalid) > 0 && !c.publishValid {
		fmt.Fprintf(stderr, "enqueue: %d of %d requests are invalid; nothing was published (--publish-valid publishes the valid ones)\n", len(invalid), len(items)+len(invalid))
		return exitFailed, false
	}
	if len(items) == 0 {
		fmt.Fprintln(stderr, "enqueue: no valid request to publish")
		return exitFailed, false
	}
	return exitOK, true
}

// waitMode is --wait: off, until submitted (--wait), or until each run
// group is terminal (--wait=completed).
type waitMode string

const (
	waitNone      waitMode = ""
	waitSubmitted waitMode = "submitted"
	waitCompleted waitMode = "completed"
)

func (w *waitMode) bind(fs *flag.FlagSet, name, usage string) { fs.Var(w, name, usage) }
func (w *waitMode) String() string                            { return string(*w) }
func (w *waitMode) IsBoolFlag() bool                          { return true } // --wait alone means submitted

func (w *waitMode) Set(v string) error {
	switch v {
	case "true", string(waitSubmitted):
		*w = waitSubmitted
	case string(waitCompleted):
		*w = waitCompleted
	case "false":
		*w = waitNone
	default:
		return fmt.Errorf("want submitted or completed")
	}
	return nil
}
