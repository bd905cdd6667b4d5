// Command omics-sim serves the sandbox Tencent Cloud Healthcare Omics API
// (package sandbox) over plain HTTP, for integration tests and benchmarks
// without credentials or network access.
//
// On startup it prints exactly one line to stdout,
//
//	omics-sim listening on HOST:PORT
//
// so a harness can start it with --listen 127.0.0.1:0 and read the bound
// address. Logs go to stderr and never contain request bodies. SIGINT or
// SIGTERM shuts it down gracefully. See docs/sandbox.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/omicsq/omicsq/sandbox"
)

// shutdownGrace bounds the graceful shutdown after a signal.
const shutdownGrace = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "omics-sim:", err)
		stop()
		os.Exit(2)
	}
}

// config is the command line.
type config struct {
	listen   string
	logLevel slog.Level
	opts     sandbox.Options
}

// run serves until ctx ends. It writes the listening line to stdout and
// logs and usage to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	cfg.opts.Logger = logger
	s, err := sandbox.New(cfg.opts)
	if err != nil {
		return err
	}
	l, err := sandbox.Listen(ctx, cfg.listen, s)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "omics-sim listening on %s\n", l.Addr()); err != nil {
		_ = l.Close()
		return fmt.Errorf("write listening address: %w", err)
	}
	logger.Info("omics-sim started", "addr", l.Addr(), "rate", cfg.opts.Rate, "seed", cfg.opts.Seed,
		"faults", cfg.opts.Faults, "visibility", cfg.opts.Visibility, "execution", cfg.opts.Execution)

	<-ctx.Done()
	logger.Info("omics-sim shutting down", "cause", context.Cause(ctx))
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	return l.Shutdown(shutdownCtx)
}

const usageHeader = `omics-sim serves the sandbox Tencent Cloud Healthcare Omics API (2022-11-28)
over plain HTTP: RunApplication, DescribeRunGroups, DescribeRuns, RetryRuns
and TerminateRunGroup with TC3-HMAC-SHA256 verification, a per-action rate
limit, fault injection, optional DescribeRunGroups lag and reordering, an
optional execution model that moves runs from Pending through Running to
Succeeded or Failed, and statistics at GET /sandbox/stats.
On startup it prints "omics-sim listening on HOST:PORT" to stdout.
Probabilities P are numbers from 0 to 1, decided per admitted call.

Usage: omics-sim [flags]

Flags:
`

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	o := &cfg.opts
	fs := flag.NewFlagSet("omics-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHeader)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:9100", "`HOST:PORT` to listen on; port 0 picks a free port (read it from the startup line)")
	fs.StringVar(&o.SecretID, "secret-id", sandbox.DefaultSecretID, "the accepted SecretId")
	fs.StringVar(&o.SecretKey, "secret-key", sandbox.DefaultSecretKey, "the accepted SecretKey")
	fs.StringVar(&o.Token, "token", "", "if set, the X-TC-Token (STS session token) every call must carry")
	o.Rate = sandbox.DefaultRate
	fs.Var((*nonNegativeInt)(&o.Rate), "rate", "`N` calls admitted per action in any sliding 1-second window (calls/s); 0 lifts the limit")
	fs.Var((*probability)(&o.Faults.InternalErrorP), "fault-internal-error", "probability `P` of answering InternalError (nothing is created)")
	fs.Var((*probability)(&o.Faults.ThrottleP), "fault-throttle", "probability `P` of a spurious RequestLimitExceeded (nothing is created)")
	fs.Var((*probability)(&o.Faults.CommitThenFailP), "fault-commit-then-fail", "probability `P` that RunApplication creates the run group, then fails the answer")
	fs.Var((*modeList)(&o.Faults.CommitThenFailModes), "fault-commit-then-fail-modes", "comma-separated `MODES` of commit-then-fail: bad_gateway (HTTP 502, HTML body), drop (connection closed), hang (no answer until the client gives up) (default all three)")
	fs.BoolVar(&o.Faults.CommitThenFailRandom, "fault-commit-then-fail-random", false, "pick the commit-then-fail mode at random instead of round-robin")
	fs.DurationVar(&o.Faults.Latency, "fault-latency", 0, "`DURATION` (e.g. 250ms, 2s) added before processing, with probability --fault-latency-p; the call is still processed if the client gave up")
	fs.Var((*probability)(&o.Faults.LatencyP), "fault-latency-p", "probability `P` of adding --fault-latency")
	fs.Var((*stringList)(&o.Faults.Actions), "fault-actions", "comma-separated `ACTIONS` the faults apply to (default every action)")
	fs.DurationVar(&o.Visibility.Lag, "describe-lag", 0, "`DURATION` a new run group stays invisible to DescribeRunGroups (its Name is still taken at once)")
	fs.DurationVar(&o.Visibility.LagMax, "describe-lag-max", 0, "if above --describe-lag, each run group's lag is drawn uniformly from [--describe-lag, `DURATION`]")
	fs.BoolVar(&o.Visibility.ReorderPages, "describe-reorder", false, "DescribeRunGroups lists matches in a fresh random order on each call, so offset paging may skip or repeat groups")
	addExecutionFlags(fs, &o.Execution)
	fs.Int64Var(&o.Seed, "seed", 1, "`SEED` of the fault decisions, run-group IDs, describe lags and run lifecycles (same seed, same sequence for a sequential client)")
	fs.Var((*stringList)(&o.KnownApplications), "known-applications", "comma-separated application `IDS` that exist (default: any well-formed ID)")
	fs.Var((*stringList)(&o.KnownEnvironments), "known-environments", "comma-separated environment `IDS` that exist (default: any)")
	fs.Var((*stringList)(&o.KnownProjects), "known-projects", "comma-separated project `IDS` that exist besides the default project (default: any)")
	fs.Var((*stringList)(&o.KnownTables), "known-tables", "comma-separated table `IDS` that exist (default: any)")
	fs.DurationVar(&o.MaxSkew, "max-skew", sandbox.DefaultMaxSkew, "largest accepted `DURATION` between X-TC-Timestamp and the server clock (AuthFailure.SignatureExpire beyond)")
	fs.DurationVar(&o.HangTimeout, "hang-timeout", sandbox.DefaultHangTimeout, "longest `DURATION` a hang-mode call is held if the client never gives up")
	fs.TextVar(&cfg.logLevel, "log-level", slog.LevelInfo, "log `LEVEL`: debug (one line per call), info, warn or error")

	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q; all settings are flags (see --help)", fs.Arg(0))
	}
	if err := checkExecutionFlags(fs, o.Execution); err != nil {
		return config{}, err
	}
	switch {
	case o.MaxSkew <= 0:
		return config{}, errors.New("--max-skew must be a positive duration, e.g. 5m")
	case o.HangTimeout <= 0:
		return config{}, errors.New("--hang-timeout must be a positive duration, e.g. 2m")
	case o.Faults.Latency < 0:
		return config{}, errors.New("--fault-latency must not be negative")
	case o.Visibility.Lag < 0:
		return config{}, errors.New("--describe-lag must not be negative")
	case o.Visibility.LagMax < 0:
		return config{}, errors.New("--describe-lag-max must not be negative")
	case o.Visibility.LagMax != 0 && o.Visibility.LagMax < o.Visibility.Lag:
		return config{}, errors.New("--describe-lag-max must be 0 or at least --describe-lag")
	case o.SecretID == "" || o.SecretKey == "":
		return config{}, errors.New("--secret-id and --secret-key must not be empty")
	}
	return cfg, nil
}

// addExecutionFlags binds the execution model's flags to e.
func addExecutionFlags(fs *flag.FlagSet, e *sandbox.Execution) {
	fs.BoolVar(&e.Enabled, "execution", false, "model run execution: each run goes Pending, Running, then Succeeded or Failed (default: runs stay Pending)")
	fs.DurationVar(&e.QueueDelay, "execution-queue-delay", 0, "`DURATION` each run stays Pending (needs --execution)")
	fs.DurationVar(&e.DurationMin, "execution-duration", 0, "`DURATION` each run stays Running, or the shortest with --execution-duration-max (needs --execution)")
	fs.DurationVar(&e.DurationMax, "execution-duration-max", 0, "if above --execution-duration, each run's duration is drawn uniformly from [--execution-duration, `DURATION`]")
	fs.Var((*probability)(&e.FailureRate), "execution-failure-rate", "probability `P` that a run ends Failed instead of Succeeded (needs --execution)")
	fs.Var((*messageList)(&e.FailureMessages), "execution-failure-message", "ErrorMessage `TEXT` of failed runs; repeat the flag for several, one is drawn per failed run (needs --execution)")
	fs.IntVar(&e.RetryLimit, "retry-limit", 0, fmt.Sprintf("`N` RetryRuns in a row on one lineage before FailedOperation.RetryLimitExceeded; 0 means %d", sandbox.DefaultRetryLimit))
}

// checkExecutionFlags rejects execution settings that would silently do
// nothing because --execution is off, and invalid combinations.
func checkExecutionFlags(fs *flag.FlagSet, e sandbox.Execution) error {
	var orphan string
	fs.Visit(func(f *flag.Flag) {
		if orphan == "" && strings.HasPrefix(f.Name, "execution-") && !e.Enabled {
			orphan = f.Name
		}
	})
	switch {
	case orphan != "":
		return fmt.Errorf("--%s needs --execution", orphan)
	case e.QueueDelay < 0:
		return errors.New("--execution-queue-delay must not be negative")
	case e.DurationMin < 0:
		return errors.New("--execution-duration must not be negative")
	case e.DurationMax != 0 && e.DurationMax < e.DurationMin:
		return errors.New("--execution-duration-max must be 0 or at least --execution-duration")
	case e.RetryLimit < 0:
		return fmt.Errorf("--retry-limit must be an integer >= 0 (0 means %d)", sandbox.DefaultRetryLimit)
	}
	return nil
}

// messageList is a repeatable flag.Value: each use appends one message,
// since messages may contain commas.
type messageList []string

func (l *messageList) String() string { return strings.Join(*l, " | ") }

func (l *messageList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// probability is a flag.Value accepting a number from 0 to 1.
type probability float64

func (p *probability) String() string { return strconv.FormatFloat(float64(*p), 'g', -1, 64) }

func (p *probability) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v >= 0 && v <= 1) {
		return errors.New("must be a probability from 0 to 1")
	}
	*p = probability(v)
	return nil
}

// nonNegativeInt is a flag.Value accepting an integer >= 0.
type nonNegativeInt int

func (n *nonNegativeInt) String() string { return strconv.Itoa(int(*n)) }

func (n *nonNegativeInt) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return errors.New("must be an integer >= 0 (0 lifts the limit)")
	}
	*n = nonNegativeInt(v)
	return nil
}

// stringList is a comma-separated flag.Value; empty means unset (nil).
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = nil
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// modeList is a comma-separated list of commit-then-fail modes.
type modeList []sandbox.CommitFailMode

func (l *modeList) String() string {
	parts := make([]string, len(*l))
	for i, m := range *l {
		parts[i] = string(m)
	}
	return strings.Join(parts, ",")
}

func (l *modeList) Set(s string) error {
	*l = nil
	for v := range strings.SplitSeq(s, ",") {
		m := sandbox.CommitFailMode(strings.TrimSpace(v))
		switch m {
		case sandbox.CommitFailBadGateway, sandbox.CommitFailDrop, sandbox.CommitFailHang:
			*l = append(*l, m)
		default:
			return errors.New("must be a comma-separated list of bad_gateway, drop and hang")
		}
	}
	return nil
}
