package operate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/omicsq/omicsq/internal/breaker"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/settings"
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

// breakers is a parsed enqueue breaker command line.
type breakers struct {
	c         *Config
	jsonOut   bool
	sets      []string
	by, byDef string
	retention time.Duration
	id        string
	edits     map[string]string
}

// Breaker runs enqueue breaker (args are those after "breaker"): list the
// trips, release or dead-letter the requests one holds, or reset it. It
// returns the exit status.
func Breaker(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	b := &breakers{c: NewConfig(), byDef: breaker.DefaultActor(getenv)}
	return command{"enqueue breaker", breakerUsage, []string{"list", "release", "dead-letter", "reset"}, b.c, b}.run(ctx, args, stdout, stderr, getenv)
}

func (b *breakers) flags(sub string) []settings.Setting {
	rows := append(b.c.ConnFlags(), settings.BreakerBucket(&b.c.Topo.BreakerBucket, queue.DefaultTopology().BreakerBucket))
	decision := []settings.Setting{
		settings.Row("by", "", "who decides, recorded with the trip", settings.String(&b.by, b.byDef)),
		settings.Row("retention", "", "how long the decision is kept and acted on before the trip is forgotten", settings.Duration(&b.retention, 24*time.Hour)),
	}
	switch sub {
	case "list":
		return append(rows, settings.Row("json", "", "print one JSON object per trip", settings.Bool(&b.jsonOut, false)))
	case "release":
		return append(append(rows, decision...), settings.Row("set", "", "edit the held requests before they are submitted again: Field=Value (repeatable)",
			settings.Strings(&b.sets)))
	case "dead-letter":
		return append(rows, decision...)
	}
	return rows
}

func (b *breakers) check(sub string, pos []string) error {
	if strings.TrimSpace(b.c.Topo.BreakerBucket) == "" {
		return errors.New("--breaker-bucket must not be empty")
	}
	if sub == "list" {
		if len(pos) > 0 {
			return errors.New("unexpected arguments")
		}
		return nil
	}
	if len(pos) != 1 {
		return errors.New("give one trip ID (enqueue breaker list prints them)")
	}
	if b.id = pos[0]; !breaker.ValidID(b.id) {
		return fmt.Errorf("%q is not a trip ID (12 hex digits, -, 6 hex digits, as enqueue breaker list prints it)", submit.SafeFieldName(b.id))
	}
	if b.retention <= 0 && sub != "reset" {
		return errors.New("--retention must be positive")
	}
	var err error
	b.edits, err = breaker.ParseEdits(b.sets)
	return err
}

func (b *breakers) run(ctx context.Context, sub string, s *Session, stdout, stderr io.Writer) int {
	kv, err := s.bucket(ctx, b.c.Topo.BreakerBucket)
	if err != nil {
		return failed(stderr, "enqueue breaker "+sub, err)
	}
	br := breaker.New(kv, breaker.Config{Actor: b.by, Retention: b.retention})
	if sub == "list" {
		return breakerList(ctx, br, b.jsonOut, stdout, stderr)
	}
	return breakerDecide(ctx, br, sub, b.id, b.edits, stdout, stderr)
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
	return Printable(strings.Join(parts, ","))
}

func breakerList(ctx context.Context, b *breaker.Breaker, jsonOut bool, stdout, stderr io.Writer) int {
	trips, err := b.List(ctx)
	if err != nil {
		return failed(stderr, "enqueue breaker list", err)
	}
	states := map[breaker.State]int{}
	t := newTable(stdout, jsonOut, "ID", "STATE", "CODE", "KIND", "RESOURCE", "KEYS", "FIRST FAILURE", "LAST FAILURE", "EDITS")
	for _, tr := range trips {
		states[tr.State]++
		if err := t.row(tr, tr.ID, string(tr.State), Printable(tr.Code), tr.Resource.Kind, Printable(orDash(tr.Resource.ID)), strconv.Itoa(tr.Keys),
			tr.FirstFailure.UTC().Format(time.RFC3339), tr.LastFailure.UTC().Format(time.RFC3339), formatEdits(tr.Edits)); err != nil {
			return failed(stderr, "enqueue breaker list", err)
		}
	}
	t.flush()
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
	return ExitOK
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
	fmt.Fprintf(stdout, "%s %s %s=%s code=%s keys=%d edits=%s\n", verb, id, before.Resource.Kind, Printable(before.Resource.ID),
		Printable(before.Code), before.Keys, formatEdits(edits))
	if sub != "reset" {
		if after, err := b.Get(ctx, id); err == nil {
			then += "; kept until " + after.ExpiresAt.UTC().Format(time.RFC3339)
		}
	}
	fmt.Fprintf(stderr, "enqueue breaker %s: %s\n", sub, then)
	return ExitOK
}

func breakerFailed(sub, id string, err error, stderr io.Writer) int {
	switch {
	case errors.Is(err, breaker.ErrNotFound):
		fmt.Fprintf(stderr, "enqueue breaker %s: no trip %s (never opened, reset, or expired; enqueue breaker list prints the live ones)\n", sub, id)
	case errors.Is(err, breaker.ErrNotOpen), errors.Is(err, breaker.ErrInvalidEdit):
		fmt.Fprintf(stderr, "enqueue breaker %s: refused: %s\n", sub, strings.TrimPrefix(err.Error(), "breaker: "))
	default:
		return failed(stderr, "enqueue breaker "+sub, err)
	}
	return ExitFailed
}
