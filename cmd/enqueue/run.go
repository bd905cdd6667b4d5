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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/settings"
	"github.com/omicsq/omicsq/internal/submit"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1 // invalid input, a publish or connection error, a dead letter
	exitTimeout     = 2 // --wait ended with requests still unresolved
	exitUsage       = 64
	exitInterrupted = 130
)

// progressEvery is how often (in requests) publishing reports progress.
const progressEvery = 1000

// publishTimeout bounds one publish (the server's ack included).
const publishTimeout = 10 * time.Second

// config holds every enqueue setting.
type config struct {
	conn           natsconn.Options
	connectTimeout time.Duration
	topo           queue.Topology
	limits         submit.Limits
	maxRequests    int
	defaults       samplesheet.Defaults
	format         string
	wait           bool
	timeout        time.Duration
	publishValid   bool
	dryRun         bool
	quiet          bool
}

// flagDef is a row of a subcommand's flag table: a settings.Setting, but
// local so that rows may be written unkeyed, as a table (vet asks for keys
// in other packages' struct literals).
type flagDef settings.Setting

// Binders of flagDef rows.
var (
	strFlag = settings.String
	intFlag = settings.Int
	durFlag = settings.Duration
)

func boolFlag(p *bool) settings.Bind { return settings.Bool(p, false) }

func flagDefs(shared []settings.Setting) []flagDef {
	defs := make([]flagDef, len(shared))
	for i, s := range shared {
		defs[i] = flagDef(s)
	}
	return defs
}

// connFlags are the NATS connection flags the worker shares (a server is
// needed here, so the URL has a default) and how long to wait for it.
func connFlags(c *config) []flagDef {
	return append(flagDefs(settings.NATS(&c.conn, "nats://127.0.0.1:4222", "NATS server URLs, comma-separated")),
		flagDef{"connect-timeout", "OMICSQ_CONNECT_TIMEOUT", "how long to wait for the NATS connection", durFlag(&c.connectTimeout, 10*time.Second)})
}

// topoFlags name the streams and subjects as the worker's flags do, but
// for the subject's spelling: --subject here.
func topoFlags(c *config) []flagDef {
	requests, outcomes := settings.Topology(&c.topo.Topology, "subject")
	return flagDefs(append(requests, outcomes...))
}

// limitFlags bound what one run reads: the message limit the worker
// shares, and how many requests.
func limitFlags(c *config) []flagDef {
	return append(flagDefs([]settings.Setting{settings.MessageLimit(&c.limits)}),
		flagDef{"max-requests", "OMICSQ_MAX_REQUESTS", "most requests (JSON items, JSONL lines, CSV rows) read in one run, all files together; 0: no bound", intFlag(&c.maxRequests, 100000)})
}

func newConfig() *config {
	return &config{conn: natsconn.Options{Name: "omicsq-enqueue"}, topo: queue.DefaultTopology(), limits: submit.DefaultLimits()}
}

// parseFlags presets flags from the environment, then parses args, which
// may mix flags and positional arguments ("--" ends the flags). It
// returns the positional arguments.
func parseFlags(fs *flag.FlagSet, defs []flagDef, args []string, getenv func(string) string) ([]string, error) {
	table := make([]settings.Setting, len(defs))
	for i, d := range defs {
		table[i] = settings.Setting(d)
	}
	return settings.Parse(fs, table, args, getenv)
}

func (c *config) validateCommon() error {
	var errs []error
	if c.connectTimeout <= 0 {
		errs = append(errs, errors.New("--connect-timeout must be positive"))
	}
	for name, v := range map[string]string{
		"subject": c.topo.RequestsSubject, "requests-stream": c.topo.RequestsStream, "results-stream": c.topo.ResultsStream,
		"results-prefix": c.topo.ResultsPrefix, "dlq-stream": c.topo.DLQStream, "dlq-prefix": c.topo.DLQPrefix,
	} {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("--%s must not be empty", name))
		}
	}
	if c.limits.MaxRequestBytes < 1 {
		errs = append(errs, errors.New("--max-message-bytes must be >= 1"))
	}
	if c.maxRequests < 0 {
		errs = append(errs, errors.New("--max-requests must be >= 0 (0: no bound)"))
	}
	return errors.Join(errs...)
}

const enqueueUsage = `Usage: enqueue [flags] FILE...      (FILE "-" reads standard input)
       enqueue dlq list|show|redrive [flags] ...
       enqueue breaker list|release|dead-letter|reset [flags] ...

Validates every run request in the files (JSON object or array, JSON Lines, or a CSV
sample sheet), then publishes them to the omicsq requests stream. Nothing is published
if any request is invalid, unless --publish-valid. See docs/enqueue.md.

Exit status: 0 success; 1 invalid input, an error or a dead letter; 2 --wait timed out;
64 usage error.

Every flag can also be set by the environment variable named in its description.

`

// run is the whole program; main only wires the process to it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && args[0] == "dlq" {
		return runDLQ(ctx, args[1:], stdout, stderr, getenv)
	}
	if len(args) > 0 && args[0] == "breaker" {
		return runBreaker(ctx, args[1:], stdout, stderr, getenv)
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
	s, err := connect(ctx, c, stderr, level)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	defer s.close()
	if _, err := requireStream(ctx, s.js, c.topo.RequestsStream); err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	acks, dups, err := publishAll(ctx, s.client, c, items, stdout, stderr)
	fmt.Fprintf(stderr, "enqueue: %d published, %d duplicates (already in the stream's de-duplication window)\n", len(acks)-dups, dups)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		fmt.Fprintf(stderr, "enqueue: %d of %d requests were not published; run again to publish them (published ones are dropped as duplicates)\n",
			len(items)-len(acks), len(items))
		return exitFailed
	}
	code := exitOK
	if c.wait {
		code = waitOutcomes(ctx, s.client, items, acks, c.timeout, stdout, stderr, c.quiet)
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
	c = newConfig()
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, enqueueUsage)
		fs.PrintDefaults()
	}
	defs := slices.Concat(connFlags(c), topoFlags(c), limitFlags(c), []flagDef{
		{"format", "", "input format: auto (by extension, else by content), json, jsonl or csv", strFlag(&c.format, "auto")},
		{"wait", "", "wait for each request's RunGroupId or dead letter", boolFlag(&c.wait)},
		{"timeout", "", "with --wait: how long to wait after publishing", durFlag(&c.timeout, 5*time.Minute)},
		{"publish-valid", "", "publish the valid requests even if some are invalid (the exit status is still 1)", boolFlag(&c.publishValid)},
		{"dry-run", "", "validate only; do not connect or publish", boolFlag(&c.dryRun)},
		{"quiet", "", "print only errors, dead letters and summaries (no per-request lines, no progress)", boolFlag(&c.quiet)},
		{"application-id", "OMICSQ_APPLICATION_ID", "CSV: ApplicationId for rows without one", strFlag(&c.defaults.ApplicationID, "")},
		{"environment-id", "OMICSQ_ENVIRONMENT_ID", "CSV: EnvironmentId for rows without one", strFlag(&c.defaults.EnvironmentID, "")},
		{"project-id", "OMICSQ_PROJECT_ID", "CSV: ProjectId for rows without one", strFlag(&c.defaults.ProjectID, "")},
	})
	files, err := parseFlags(fs, defs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return nil, "", nil, exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return nil, "", nil, exitUsage
	}
	f, ferr := samplesheet.ParseFormat(c.format)
	verr := c.validateCommon()
	if ferr != nil {
		verr = errors.Join(verr, fmt.Errorf("--format %w", ferr))
	}
	if c.wait && c.timeout <= 0 {
		verr = errors.Join(verr, errors.New("--timeout must be positive"))
	}
	if len(files) == 0 {
		verr = errors.Join(verr, errors.New("no input files (use - for standard input)"))
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

// requireStream looks a stream up, explaining the usual reason it is
// missing: enqueue never creates streams, the worker does.
func requireStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, name)
	switch {
	case err == nil:
		return s, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("stream %s not found: is a worker running? (it creates the streams)", name)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return nil, fmt.Errorf("stream %s: JetStream is not enabled on this server or account: %w", name, err)
	}
	return nil, fmt.Errorf("stream %s: %w", name, err)
}
