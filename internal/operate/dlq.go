package operate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/redrive"
	"github.com/omicsq/omicsq/internal/settings"
)

const dlqUsage = `Usage:
  enqueue dlq list    [--code C] [--reason R] [--key K] [--json]
  enqueue dlq show    KEY|SEQ   (or --key K / --seq N; an all-digit argument is a sequence)
  enqueue dlq redrive (--all | --key K | --code C | --reason R) [--set Field=Value ...] [--dry-run]

list prints every dead letter: stream sequence, key, reason, error code, failure time
and attempts. show prints one dead letter as indented JSON (the latest of a key).
redrive republishes matching dead letters to the requests stream with the same key and
a fresh message ID, after applying the --set edits and validating the result again,
then deletes them from the dead-letter stream. --set Field=Value sets a top-level
request field or a nested one (Option.X, NFOption.X); Value is parsed as JSON when it is
valid JSON (numbers, true/false, null, "quoted strings", arrays, objects), else taken as
a string; null removes the field. A dead letter whose request would no longer be the one
its key was first submitted with is refused when the ledger (--ledger-bucket) says a run
group may already exist for the key; an edited redrive is refused too if the ledger
cannot be read.

`

// dlq is a parsed enqueue dlq command line.
type dlq struct {
	c            *Config
	filter       client.DeadLetterFilter
	reason       string
	jsonOut, all bool
	dryRun       bool
	seqArg       string
	sets         []string
	edits        []redrive.Edit
}

// DLQ runs enqueue dlq (args are those after "dlq"): list, show or redrive
// dead letters. It returns the exit status.
func DLQ(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	d := &dlq{c: NewConfig()}
	return command{"enqueue dlq", dlqUsage, []string{"list", "show", "redrive"}, d.c, d}.run(ctx, args, stdout, stderr, getenv)
}

func (d *dlq) flags(sub string) []settings.Setting {
	rows := append(d.c.ConnFlags(), d.c.TopoFlags()...)
	f := &d.filter
	switch sub {
	case "list":
		return append(rows,
			settings.Row("code", "", "only dead letters with this error code", settings.String(&f.Code, "")),
			settings.Row("reason", "", "only dead letters with this reason", settings.String(&d.reason, "")),
			settings.Row("key", "", "only dead letters of this key", settings.String(&f.Key, "")),
			settings.Row("json", "", "print one JSON object per dead letter", settings.Bool(&d.jsonOut, false)))
	case "show":
		return append(rows,
			settings.Row("key", "", "show the latest dead letter of this key", settings.String(&f.Key, "")),
			settings.Row("seq", "", "show the dead letter at this stream sequence", settings.String(&d.seqArg, "")))
	}
	rows = append(rows, d.c.LimitFlags()...)
	return append(rows,
		settings.LedgerBucket(&d.c.Topo.LedgerBucket, queue.DefaultTopology().LedgerBucket,
			" (read to refuse edits that could create a second run group)"),
		settings.Row("all", "", "redrive every dead letter", settings.Bool(&d.all, false)),
		settings.Row("key", "", "redrive the dead letters of this key", settings.String(&f.Key, "")),
		settings.Row("code", "", "redrive the dead letters with this error code", settings.String(&f.Code, "")),
		settings.Row("reason", "", "redrive the dead letters with this reason", settings.String(&d.reason, "")),
		settings.Row("dry-run", "", "print what would be redriven; change nothing", settings.Bool(&d.dryRun, false)),
		settings.Row("set", "", "edit the request before redriving: Field=Value (repeatable)", settings.Strings(&d.sets)))
}

func (d *dlq) check(sub string, pos []string) error {
	d.filter.Reason = client.DeadLetterReason(d.reason)
	f := &d.filter
	switch sub {
	case "list":
		if len(pos) > 0 {
			return errors.New("unexpected arguments")
		}
	case "show":
		switch {
		case len(pos) > 1 || (len(pos) == 1 && (f.Key != "" || d.seqArg != "")) || (f.Key != "" && d.seqArg != ""):
			return errors.New("give one KEY or SEQ")
		case len(pos) == 1 && isDigits(pos[0]):
			d.seqArg = pos[0]
		case len(pos) == 1:
			f.Key = pos[0]
		case f.Key == "" && d.seqArg == "":
			return errors.New("give a KEY or SEQ")
		}
	case "redrive":
		if len(pos) > 0 {
			return errors.New("unexpected arguments (select with --all, --key, --code or --reason)")
		}
		if strings.TrimSpace(d.c.Topo.LedgerBucket) == "" {
			return errors.New("--ledger-bucket must not be empty")
		}
		if d.all == (*f != client.DeadLetterFilter{}) {
			return errors.New("select with exactly one of --all, or --key / --code / --reason (these combine)")
		}
		for _, s := range d.sets {
			e, err := redrive.ParseEdit(s)
			if err != nil {
				return err
			}
			d.edits = append(d.edits, e)
		}
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func (d *dlq) run(ctx context.Context, sub string, s *Session, stdout, stderr io.Writer) int {
	if err := s.RequireStream(ctx, d.c.Topo.DLQStream); err != nil {
		return failed(stderr, "enqueue dlq "+sub, err)
	}
	switch sub {
	case "list":
		return d.list(ctx, s, stdout, stderr)
	case "show":
		return d.show(ctx, s, stdout, stderr)
	}
	return d.redrive(ctx, s, stdout, stderr)
}

func (d *dlq) list(ctx context.Context, s *Session, stdout, stderr io.Writer) int {
	t := newTable(stdout, d.jsonOut, "SEQ", "KEY", "REASON", "CODE", "FAILED AT", "ATTEMPTS")
	n, total := 0, 0
	for dl, err := range s.Client.DeadLetters(ctx, client.DeadLetterFilter{}) {
		if err == nil && d.filter.Match(dl) {
			n++
			err = listRow(t, dl.Summary())
		}
		if err != nil {
			return failed(stderr, "enqueue dlq list", err)
		}
		total++
	}
	t.flush()
	fmt.Fprintf(stderr, "enqueue dlq list: %d of %d dead letters\n", n, total)
	return ExitOK
}

func listRow(t *table, sum client.DeadLetterSummary) error {
	attempts := "-"
	if !sum.Unreadable {
		attempts = strconv.Itoa(sum.Attempts)
	}
	return t.row(sum, strconv.FormatUint(sum.Seq, 10), Printable(orDash(sum.Key)), Printable(orDash(string(sum.Reason))),
		Printable(orDash(sum.Code)), sum.FailedAt.Format(time.RFC3339), attempts)
}

func (d *dlq) show(ctx context.Context, s *Session, stdout, stderr io.Writer) int {
	var dl client.StoredDeadLetter
	var err error
	missing := "for key " + d.filter.Key
	if d.seqArg != "" {
		seq, perr := strconv.ParseUint(d.seqArg, 10, 64)
		if perr != nil || seq == 0 {
			fmt.Fprintln(stderr, "enqueue dlq show: --seq must be a positive integer")
			return ExitUsage
		}
		missing = "at sequence " + d.seqArg
		dl, err = s.Client.DeadLetterAt(ctx, seq)
	} else {
		if kerr := client.ValidateKey(d.filter.Key); kerr != nil {
			fmt.Fprintf(stderr, "enqueue dlq show: %v\n", kerr)
			return ExitUsage
		}
		dl, err = s.Client.LatestDeadLetter(ctx, d.filter.Key)
	}
	if errors.Is(err, client.ErrNotFound) {
		fmt.Fprintf(stderr, "enqueue dlq show: no dead letter %s\n", missing)
		return ExitFailed
	}
	if err != nil {
		return failed(stderr, "enqueue dlq show", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, dl.Data, "", "  "); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq show: sequence %d is not JSON\n", dl.Sequence)
		return ExitFailed
	}
	out.WriteByte('\n')
	fmt.Fprintf(stderr, "# dead letter at sequence %d, stored %s, reason %s, code %s\n", dl.Sequence,
		dl.Stored.UTC().Format(time.RFC3339), orDash(Printable(dl.Header.Get(client.HeaderReason))), orDash(Printable(dl.Header.Get(client.HeaderErrorCode))))
	if _, err := stdout.Write(out.Bytes()); err != nil {
		return ExitFailed
	}
	return ExitOK
}

// redrive plans the redrive (internal/redrive holds the rules), prints it,
// and unless --dry-run carries it out, stopping at a failed publish.
func (d *dlq) redrive(ctx context.Context, s *Session, stdout, stderr io.Writer) int {
	if err := s.RequireStream(ctx, d.c.Topo.ResultsStream); err != nil {
		return failed(stderr, "enqueue dlq redrive", err)
	}
	guard := redrive.OpenGuard(ctx, s.JS, d.c.Topo.LedgerBucket, d.c.Limits)
	if err := guard.OpenErr(); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v: edited dead letters are refused; unedited ones are redriven without the ledger check (the worker checks them at delivery)\n", err)
	}
	plan, err := redrive.Planner{Client: s.Client, Guard: guard, Limits: d.c.Limits}.Plan(ctx, d.filter, d.edits)
	if err != nil {
		return failed(stderr, "enqueue dlq redrive", err)
	}
	if len(plan.Steps) == 0 {
		fmt.Fprintf(stderr, "enqueue dlq redrive: no dead letter matches (%d read)\n", plan.Scanned)
		return ExitFailed
	}
	t := redriveTally{dryRun: d.dryRun, ledgerBound: guard.OpenErr() == nil}
	for _, st := range plan.Steps {
		if !t.step(ctx, s.Client, st, stdout, stderr) {
			break
		}
	}
	return t.summary(stderr)
}

// redriveTally prints and counts the steps of a redrive.
type redriveTally struct {
	dryRun, ledgerBound                bool
	redriven, skipped, refused, failed int
}

// step carries out and prints one step; false stops the redrive.
func (t *redriveTally) step(ctx context.Context, cl *client.Client, st redrive.Step, stdout, stderr io.Writer) bool {
	d := st.Dead
	switch st.Kind {
	case redrive.Skip:
		t.skipped++
		if st.Refused {
			t.refused++
		}
		fmt.Fprintf(stdout, "skipped seq=%d key=%s: %s\n", d.Sequence, Printable(orDash(d.Key)), Printable(st.Why))
	case redrive.Fail:
		t.failed++
		fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d: %v\n", d.Sequence, st.Err)
	case redrive.Redrive:
		if st.Unchecked != nil && t.ledgerBound { // an unbound ledger was reported once already
			fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d key=%s: %v: redriven without the ledger check (the worker checks it at delivery)\n", d.Sequence, d.Key, st.Unchecked)
		}
		verb := "redriven"
		if t.dryRun {
			verb = "would redrive"
		} else if err := redrive.Execute(ctx, cl, st); err != nil {
			t.failed++
			fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d key=%s: %v\n", d.Sequence, d.Key, err)
			return errors.Is(err, client.ErrNotDeleted) // a failed publish stops the redrive
		}
		t.redriven++
		fmt.Fprintf(stdout, "%s seq=%d key=%s\n", verb, d.Sequence, d.Key)
	case redrive.DeleteSuperseded:
		verb := "deleted"
		if t.dryRun {
			verb = "would delete"
		} else if err := redrive.Execute(ctx, cl, st); err != nil {
			t.failed++
			fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d: delete: %v\n", d.Sequence, err)
			return true
		}
		fmt.Fprintf(stdout, "%s seq=%d key=%s: superseded by seq %d\n", verb, d.Sequence, d.Key, st.SupersededBy)
	}
	return true
}

func (t *redriveTally) summary(stderr io.Writer) int {
	verb := "redriven"
	if t.dryRun {
		verb = "would redrive"
	}
	summary := fmt.Sprintf("enqueue dlq redrive: %d %s, %d skipped", t.redriven, verb, t.skipped)
	if t.refused > 0 {
		summary += fmt.Sprintf(" (%d refused)", t.refused)
	}
	if t.failed > 0 {
		summary += fmt.Sprintf(", %d failed", t.failed)
	}
	fmt.Fprintln(stderr, summary)
	if t.skipped > 0 || t.failed > 0 {
		return ExitFailed
	}
	return ExitOK
}
