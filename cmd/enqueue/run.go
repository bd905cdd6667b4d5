package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
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
	defaults       csvDefaults
	format         string
	wait           bool
	timeout        time.Duration
	publishValid   bool
	dryRun         bool
	quiet          bool
}

// flagDef is one flag and the environment variable that presets it.
type flagDef struct {
	name, env, usage string
	bind             func(fs *flag.FlagSet, name, usage string)
}

func strFlag(p *string, def string) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.StringVar(p, n, def, u) }
}

func boolFlag(p *bool) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.BoolVar(p, n, false, u) }
}

func intFlag(p *int, def int) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.IntVar(p, n, def, u) }
}

func durFlag(p *time.Duration, def time.Duration) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.DurationVar(p, n, def, u) }
}

// connFlags are the NATS connection flags, shared with the worker's names.
func connFlags(c *config) []flagDef {
	return []flagDef{
		{"nats-url", "NATS_URL", "NATS server URLs, comma-separated", strFlag(&c.conn.URLs, "nats://127.0.0.1:4222")},
		{"nats-creds", "NATS_CREDS", "path of a NATS .creds file (JWT + NKey)", strFlag(&c.conn.CredsFile, "")},
		{"nats-nkey", "NATS_NKEY", "path of a file holding an NKey seed", strFlag(&c.conn.NKeySeedFile, "")},
		{"nats-user", "NATS_USER", "NATS user name", strFlag(&c.conn.User, "")},
		{"nats-password", "NATS_PASSWORD", "NATS password (prefer the environment variable)", strFlag(&c.conn.Password, "")},
		{"nats-token", "NATS_TOKEN", "NATS token (prefer the environment variable)", strFlag(&c.conn.Token, "")},
		{"nats-ca", "NATS_CA", "path of a PEM CA bundle to verify the NATS server", strFlag(&c.conn.CAFile, "")},
		{"nats-cert", "NATS_CERT", "path of a PEM client certificate for NATS mutual TLS", strFlag(&c.conn.CertFile, "")},
		{"nats-key", "NATS_KEY", "path of the PEM private key of --nats-cert", strFlag(&c.conn.KeyFile, "")},
		{"nats-inbox-prefix", "NATS_INBOX_PREFIX", "prefix of reply subjects instead of _INBOX (see docs/security.md)", strFlag(&c.conn.InboxPrefix, "")},
		{"connect-timeout", "OMICSQ_CONNECT_TIMEOUT", "how long to wait for the NATS connection", durFlag(&c.connectTimeout, 10*time.Second)},
	}
}

// topoFlags name the streams and subjects; the defaults and environment
// variables are the worker's.
func topoFlags(c *config) []flagDef {
	t := queue.DefaultTopology()
	return []flagDef{
		{"subject", "OMICSQ_REQUESTS_SUBJECT", "subject requests are published to", strFlag(&c.topo.RequestsSubject, t.RequestsSubject)},
		{"requests-stream", "OMICSQ_REQUESTS_STREAM", "stream of run requests", strFlag(&c.topo.RequestsStream, t.RequestsStream)},
		{"results-stream", "OMICSQ_RESULTS_STREAM", "stream of results", strFlag(&c.topo.ResultsStream, t.ResultsStream)},
		{"results-prefix", "OMICSQ_RESULTS_PREFIX", "results are published to <prefix>.<key token>", strFlag(&c.topo.ResultsPrefix, t.ResultsPrefix)},
		{"dlq-stream", "OMICSQ_DLQ_STREAM", "stream of dead letters", strFlag(&c.topo.DLQStream, t.DLQStream)},
		{"dlq-prefix", "OMICSQ_DLQ_PREFIX", "dead letters are published to <prefix>.<key token>", strFlag(&c.topo.DLQPrefix, t.DLQPrefix)},
	}
}

// limitFlags mirror submit.Limits (and the worker's flags).
func limitFlags(c *config) []flagDef {
	l := submit.DefaultLimits()
	return []flagDef{
		{"max-message-bytes", "OMICSQ_MAX_MESSAGE_BYTES", "largest request body accepted (the requests stream's message limit; the only local size rule)", intFlag(&c.limits.MaxRequestBytes, l.MaxRequestBytes)},
		{"max-requests", "OMICSQ_MAX_REQUESTS", "most requests (JSON items, JSONL lines, CSV rows) read in one run, all files together; 0: no bound", intFlag(&c.maxRequests, 100000)},
	}
}

func newConfig() *config {
	return &config{conn: natsconn.Options{Name: "omicsq-enqueue"}, topo: queue.DefaultTopology(), limits: submit.DefaultLimits()}
}

// parseFlags presets flags from the environment, then parses args, which
// may mix flags and positional arguments ("--" ends the flags). It
// returns the positional arguments.
func parseFlags(fs *flag.FlagSet, defs []flagDef, args []string, getenv func(string) string) ([]string, error) {
	for _, d := range defs {
		usage := d.usage
		if d.env != "" {
			usage += " (env " + d.env + ")"
		}
		d.bind(fs, d.name, usage)
	}
	for _, d := range defs {
		if d.env == "" {
			continue
		}
		if v := getenv(d.env); v != "" {
			if err := fs.Set(d.name, v); err != nil {
				// The value may be a secret: name the variable only.
				return nil, fmt.Errorf("environment variable %s: invalid value for --%s", d.env, d.name)
			}
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) >= len(rest)+1 && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
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
	for _, v := range []struct {
		name string
		n    int
	}{{"max-message-bytes", c.limits.MaxRequestBytes}} {
		if v.n < 1 {
			errs = append(errs, fmt.Errorf("--%s must be >= 1", v.name))
		}
	}
	if c.maxRequests < 0 {
		errs = append(errs, fmt.Errorf("--max-requests must be >= 0 (0: no bound)"))
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
	c := newConfig()
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, enqueueUsage)
		fs.PrintDefaults()
	}
	defs := append(connFlags(c), topoFlags(c)...)
	defs = append(defs, limitFlags(c)...)
	defs = append(defs,
		flagDef{"format", "", "input format: auto (by extension, else by content), json, jsonl or csv", strFlag(&c.format, "auto")},
		flagDef{"wait", "", "wait for each request's RunGroupId or dead letter", boolFlag(&c.wait)},
		flagDef{"timeout", "", "with --wait: how long to wait after publishing", durFlag(&c.timeout, 5*time.Minute)},
		flagDef{"publish-valid", "", "publish the valid requests even if some are invalid (the exit status is still 1)", boolFlag(&c.publishValid)},
		flagDef{"dry-run", "", "validate only; do not connect or publish", boolFlag(&c.dryRun)},
		flagDef{"quiet", "", "print only errors, dead letters and summaries (no per-request lines, no progress)", boolFlag(&c.quiet)},
		flagDef{"application-id", "OMICSQ_APPLICATION_ID", "CSV: ApplicationId for rows without one", strFlag(&c.defaults.ApplicationID, "")},
		flagDef{"environment-id", "OMICSQ_ENVIRONMENT_ID", "CSV: EnvironmentId for rows without one", strFlag(&c.defaults.EnvironmentID, "")},
		flagDef{"project-id", "OMICSQ_PROJECT_ID", "CSV: ProjectId for rows without one", strFlag(&c.defaults.ProjectID, "")},
	)
	files, err := parseFlags(fs, defs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitUsage
	}
	f, ferr := parseFormat(c.format)
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
		return exitUsage
	}

	items, invalid, err := readInputs(c, f, files, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitUsage
	}
	for _, e := range invalid {
		fmt.Fprintln(stderr, e.Error())
	}
	total := len(items) + len(invalid)
	if c.dryRun {
		if !c.quiet {
			for _, it := range items {
				fmt.Fprintf(stdout, "%s %s valid\n", it.Loc, it.Key)
			}
		}
		fmt.Fprintf(stderr, "enqueue: dry run: %d valid, %d invalid\n", len(items), len(invalid))
		if len(invalid) > 0 {
			return exitFailed
		}
		return exitOK
	}
	if len(invalid) > 0 && !c.publishValid {
		fmt.Fprintf(stderr, "enqueue: %d of %d requests are invalid; nothing was published (--publish-valid publishes the valid ones)\n", len(invalid), total)
		return exitFailed
	}
	if len(items) == 0 {
		fmt.Fprintln(stderr, "enqueue: no valid request to publish")
		return exitFailed
	}

	logLevel := slog.LevelWarn
	if c.quiet {
		logLevel = slog.LevelError
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	nc, err := natsconn.Connect(cctx, c.conn, log, natsconn.Hooks{})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: jetstream: %v\n", err)
		return exitFailed
	}
	if _, err := requireStream(ctx, js, c.topo.RequestsStream); err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		return exitFailed
	}
	var w *watch
	if c.wait {
		if w, err = startWatch(ctx, js, c.topo, items); err != nil {
			fmt.Fprintf(stderr, "enqueue: %v\n", err)
			return exitFailed
		}
		defer w.stop()
	}

	published, dups, err := publishAll(ctx, js, c, items, stdout, stderr)
	fmt.Fprintf(stderr, "enqueue: %d published, %d duplicates (already in the stream's de-duplication window)\n", published, dups)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: %v\n", err)
		fmt.Fprintf(stderr, "enqueue: %d of %d requests were not published; run again to publish them (published ones are dropped as duplicates)\n",
			len(items)-published-dups, len(items))
		return exitFailed
	}
	code := exitOK
	if w != nil {
		code = w.wait(ctx, c.timeout, stdout, stderr, c.quiet)
	}
	if len(invalid) > 0 {
		return exitFailed
	}
	return code
}

// readInputs reads and validates every file, then checks keys and names
// across all of them.
func readInputs(c *config, f format, files []string, stdin io.Reader) ([]item, []*itemError, error) {
	p := &parser{lim: c.limits, defaults: c.defaults, readFile: os.ReadFile, maxRequests: c.maxRequests}
	var items []item
	var invalid []*itemError
	usedStdin := false
	for _, file := range files {
		var data []byte
		var err error
		name, dir := file, filepath.Dir(file)
		if file == "-" {
			if usedStdin {
				return nil, nil, errors.New("standard input (-) can be read only once")
			}
			usedStdin = true
			name, dir = "stdin", "."
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", name, err)
		}
		its, errs := p.parse(name, dir, data, f)
		items = append(items, its...)
		invalid = append(invalid, errs...)
	}
	items, dupErrs := crossCheck(items)
	return items, append(invalid, dupErrs...), nil
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

// publishAll publishes items in order, stopping at the first error.
func publishAll(ctx context.Context, js jetstream.JetStream, c *config, items []item, stdout, stderr io.Writer) (published, dups int, err error) {
	for i, it := range items {
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		dup, err := queue.PublishRequest(pctx, js, c.topo, it.Key, it.Body, nil)
		cancel()
		if err != nil {
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
				return published, dups, fmt.Errorf("%s: no stream stores subject %s: check --subject (is a worker running? it creates the streams)", it.Loc, c.topo.RequestsSubject)
			}
			return published, dups, fmt.Errorf("%s: %w", it.Loc, err)
		}
		status := "published"
		if dup {
			status = "duplicate"
			dups++
		} else {
			published++
		}
		if !c.quiet {
			fmt.Fprintf(stdout, "%s %s %s\n", it.Loc, it.Key, status)
			if n := i + 1; len(items) > progressEvery && n%progressEvery == 0 {
				fmt.Fprintf(stderr, "enqueue: published %d of %d\n", n, len(items))
			}
		}
	}
	return published, dups, nil
}
