package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submit"
)

const breakerUsage = `Usage:
  enqueue breaker list        [--json]
  enqueue breaker release     ID [--set Field=Value ...] [--by NAME] [--retention D]
  enqueue breaker dead-letter ID [--by NAME] [--retention D]
  enqueue breaker reset       ID

When many different requests are rejected with the same permanent error for the same
resource in a short time (by default 5 keys within 60s: a wrong ApplicationId in a
sample sheet), the workers open a trip for that code and resource: they stop calling
the API for it and hold its requests (neither dead-lettered nor lost), while every
other request flows. list prints every trip: ID, state, code, resource kind and ID,
distinct keys, first and last failure, edits. release ID has the workers submit the
held requests again, after setting each --set Field=Value (Field is ApplicationId,
ApplicationVersionId, ProjectId, TableId or EnvironmentId; Value is taken as it is, or
unquoted if it is a JSON string). dead-letter ID has them dead-lettered instead
(permanent_error). A released or dead-lettered trip is kept for --retention, then
forgotten. reset ID closes the trip and forgets it at once: the held requests are
submitted again as they are, and failures count afresh.

`

func runBreaker(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, breakerUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub := args[0]
	c := newConfig()
	fs := flag.NewFlagSet("enqueue breaker "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, breakerUsage)
		fs.PrintDefaults()
	}
	defs := append(connFlags(c),
		flagDef{"breaker-bucket", "OMICSQ_BREAKER_BUCKET", "KV bucket of the resource breakers",
			strFlag(&c.topo.BreakerBucket, queue.DefaultTopology().BreakerBucket)})
	var jsonOut bool
	var sets stringsFlag
	var by string
	var retention time.Duration
	decision := []flagDef{
		{"by", "", "who decides, recorded with the trip", strFlag(&by, defaultOperator(getenv))},
		{"retention", "", "how long the decision is kept and acted on before the trip is forgotten", durFlag(&retention, 24*time.Hour)},
	}
	switch sub {
	case "list":
		defs = append(defs, flagDef{"json", "", "print one JSON object per trip", boolFlag(&jsonOut)})
	case "release":
		defs = append(defs, decision...)
		defs = append(defs, flagDef{"set", "", "edit the held requests before they are submitted again: Field=Value (repeatable)",
			func(fs *flag.FlagSet, n, u string) { fs.Var(&sets, n, u) }})
	case "dead-letter":
		defs = append(defs, decision...)
	case "reset":
	default:
		fmt.Fprintf(stderr, "enqueue breaker: unknown command %q\n\n%s", submit.SafeFieldName(sub), breakerUsage)
		return exitUsage
	}
	pos, err := parseFlags(fs, defs, args[1:], getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "enqueue breaker %s: %s\n", sub, fmt.Sprintf(format, a...))
		return exitUsage
	}
	if err != nil {
		return usage("%v", err)
	}
	if err := c.validateCommon(); err != nil {
		return usage("%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if strings.TrimSpace(c.topo.BreakerBucket) == "" {
		return usage("--breaker-bucket must not be empty")
	}
	var id string
	edits := map[string]string{}
	if sub == "list" {
		if len(pos) > 0 {
			return usage("unexpected arguments")
		}
	} else {
		if len(pos) != 1 {
			return usage("give one trip ID (enqueue breaker list prints them)")
		}
		if id = pos[0]; !breaker.ValidID(id) {
			return usage("%q is not a trip ID (12 hex digits, -, 6 hex digits, as enqueue breaker list prints it)", submit.SafeFieldName(id))
		}
		if retention <= 0 && sub != "reset" {
			return usage("--retention must be positive")
		}
		for _, s := range sets {
			field, value, err := parseBreakerSet(s)
			if err != nil {
				return usage("%v", err)
			}
			if _, dup := edits[field]; dup {
				return usage("--set %s given twice", field)
			}
			edits[field] = value
		}
		if err := breaker.ValidateEdits(edits); err != nil {
			return usage("--set: %s", strings.TrimPrefix(err.Error(), breaker.ErrInvalidEdit.Error()+": "))
		}
	}

	nc, kv, err := openBreakers(ctx, c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue breaker %s: %v\n", sub, err)
		return exitFailed
	}
	defer nc.Close()
	b := breaker.New(kv, breaker.Config{Actor: by, Retention: retention})
	switch sub {
	case "list":
		return breakerList(ctx, b, jsonOut, stdout, stderr)
	default:
		return breakerDecide(ctx, b, sub, id, edits, stdout, stderr)
	}
}

// defaultOperator is user@host, as far as they are known.
func defaultOperator(getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = "operator"
	}
	if host, err := os.Hostname(); err == nil && host != "" {
		return user + "@" + host
	}
	return user
}

// parseBreakerSet parses Field=Value; a Value that is a JSON string is
// unquoted (as dlq redrive reads it), anything else is taken as it is.
func parseBreakerSet(s string) (field, value string, err error) {
	field, value, ok := strings.Cut(s, "=")
	field = strings.TrimSpace(field)
	if !ok || field == "" {
		return "", "", errors.New("--set wants Field=Value")
	}
	if strings.HasPrefix(value, `"`) {
		var v string
		if json.Unmarshal([]byte(value), &v) == nil {
			value = v
		}
	}
	return field, value, nil
}

func openBreakers(ctx context.Context, c *config, stderr io.Writer) (*nats.Conn, jetstream.KeyValue, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, c.conn, log, natsconn.Hooks{})
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	kv, err := js.KeyValue(ctx, c.topo.BreakerBucket)
	switch {
	case err == nil:
		return nc, kv, nil
	case errors.Is(err, jetstream.ErrBucketNotFound):
		err = fmt.Errorf("bucket %s not found: is a worker running? (it creates the buckets)", c.topo.BreakerBucket)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		err = fmt.Errorf("bucket %s: JetStream is not enabled on this server or account: %w", c.topo.BreakerBucket, err)
	default:
		err = fmt.Errorf("bucket %s: %w", c.topo.BreakerBucket, err)
	}
	nc.Close()
	return nil, nil, err
}

// formatEdits prints edits as Field=Value,... in field order ("-": none).
func formatEdits(edits map[string]string) string {
	if len(edits) == 0 {
		return "-"
	}
	var parts []string
	for _, f := range slices.Sorted(maps.Keys(edits)) {
		parts = append(parts, f+"="+edits[f])
	}
	return printable(strings.Join(parts, ","))
}

func breakerList(ctx context.Context, b *breaker.Breaker, jsonOut bool, stdout, stderr io.Writer) int {
	trips, err := b.List(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue breaker list: %v\n", err)
		return exitFailed
	}
	states := map[breaker.State]int{}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		for _, t := range trips {
			states[t.State]++
			if err := enc.Encode(t); err != nil {
				fmt.Fprintf(stderr, "enqueue breaker list: %v\n", err)
				return exitFailed
			}
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tCODE\tKIND\tRESOURCE\tKEYS\tFIRST FAILURE\tLAST FAILURE\tEDITS")
		for _, t := range trips {
			states[t.State]++
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.ID, t.State, printable(t.Code), t.Resource.Kind,
				printable(orDash(t.Resource.ID)), t.Keys, t.FirstFailure.UTC().Format(time.RFC3339),
				t.LastFailure.UTC().Format(time.RFC3339), formatEdits(t.Edits))
		}
		tw.Flush()
	}
	var counts []string
	for _, s := range []breaker.State{breaker.Open, breaker.Released, breaker.DeadLettered, breaker.Closed} {
		if n := states[s]; n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", n, s))
		}
	}
	summary := fmt.Sprintf("enqueue breaker list: %d trip", len(trips))
	if len(trips) != 1 {
		summary += "s"
	}
	if len(counts) > 0 {
		summary += " (" + strings.Join(counts, ", ") + ")"
	}
	fmt.Fprintln(stderr, summary)
	return exitOK
}

func breakerDecide(ctx context.Context, b *breaker.Breaker, sub, id string, edits map[string]string, stdout, stderr io.Writer) int {
	before, err := b.Get(ctx, id)
	if err != nil {
		return breakerFailed(sub, id, err, stderr)
	}
	var verb, then string
	switch sub {
	case "release":
		err = b.Release(ctx, id, edits)
		verb = "released"
		then = "the workers submit the held requests again"
		if len(edits) > 0 {
			then += " with " + formatEdits(edits)
		} else {
			then += " as they are"
		}
	case "dead-letter":
		err = b.DeadLetter(ctx, id)
		verb, then = "dead-lettered", "the workers dead-letter the held requests (permanent_error)"
	default:
		err = b.Reset(ctx, id)
		verb, then = "reset", "the trip is closed and forgotten: held requests are submitted again as they are, and failures count afresh"
	}
	if err != nil {
		return breakerFailed(sub, id, err, stderr)
	}
	fmt.Fprintf(stdout, "%s %s %s=%s code=%s keys=%d edits=%s\n", verb, id, before.Resource.Kind, printable(before.Resource.ID),
		printable(before.Code), before.Keys, formatEdits(edits))
	if sub != "reset" {
		if after, err := b.Get(ctx, id); err == nil {
			then += "; kept until " + after.ExpiresAt.UTC().Format(time.RFC3339)
		}
	}
	fmt.Fprintf(stderr, "enqueue breaker %s: %s\n", sub, then)
	return exitOK
}

func breakerFailed(sub, id string, err error, stderr io.Writer) int {
	switch {
	case errors.Is(err, breaker.ErrNotFound):
		fmt.Fprintf(stderr, "enqueue breaker %s: no trip %s (never opened, reset, or expired; enqueue breaker list prints the live ones)\n", sub, id)
	case errors.Is(err, breaker.ErrNotOpen), errors.Is(err, breaker.ErrInvalidEdit):
		fmt.Fprintf(stderr, "enqueue breaker %s: refused: %s\n", sub, strings.TrimPrefix(err.Error(), "breaker: "))
	default:
		fmt.Fprintf(stderr, "enqueue breaker %s: %v\n", sub, err)
	}
	return exitFailed
}
