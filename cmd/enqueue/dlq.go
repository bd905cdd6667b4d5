package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/redrive"
	"github.com/omicsq/omicsq/internal/submit"
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

// stringsFlag collects a repeatable flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// dlqArgs is a parsed dlq command line.
type dlqArgs struct {
	sub          string
	filter       client.DeadLetterFilter
	reason       string
	jsonOut, all bool
	dryRun       bool
	seqArg       string
	sets         stringsFlag
	edits        []redrive.Edit
	positional   []string
	c            *config
}

func (a *dlqArgs) flags() []flagDef {
	defs := append(connFlags(a.c), topoFlags(a.c)...)
	f := &a.filter
	switch a.sub {
	case "list":
		return append(defs,
			flagDef{"code", "", "only dead letters with this error code", strFlag(&f.Code, "")},
			flagDef{"reason", "", "only dead letters with this reason", strFlag(&a.reason, "")},
			flagDef{"key", "", "only dead letters of this key", strFlag(&f.Key, "")},
			flagDef{"json", "", "print one JSON object per dead letter", boolFlag(&a.jsonOut)})
	case "show":
		return append(defs,
			flagDef{"key", "", "show the latest dead letter of this key", strFlag(&f.Key, "")},
			flagDef{"seq", "", "show the dead letter at this stream sequence", strFlag(&a.seqArg, "")})
	}
	defs = append(defs, limitFlags(a.c)...)
	return append(defs,
		flagDef{"ledger-bucket", "OMICSQ_LEDGER_BUCKET", "KV bucket of the submission ledger (read to refuse edits that could create a second run group)",
			strFlag(&a.c.topo.LedgerBucket, queue.DefaultTopology().LedgerBucket)},
		flagDef{"all", "", "redrive every dead letter", boolFlag(&a.all)},
		flagDef{"key", "", "redrive the dead letters of this key", strFlag(&f.Key, "")},
		flagDef{"code", "", "redrive the dead letters with this error code", strFlag(&f.Code, "")},
		flagDef{"reason", "", "redrive the dead letters with this reason", strFlag(&a.reason, "")},
		flagDef{"dry-run", "", "print what would be redriven; change nothing", boolFlag(&a.dryRun)},
		flagDef{"set", "", "edit the request before redriving: Field=Value (repeatable)", func(fs *flag.FlagSet, n, u string) { fs.Var(&a.sets, n, u) }})
}

// check validates the arguments of a parsed command line.
func (a *dlqArgs) check() error {
	a.filter.Reason = client.DeadLetterReason(a.reason)
	pos, f := a.positional, &a.filter
	switch a.sub {
	case "list":
		if len(pos) > 0 {
			return errors.New("unexpected arguments")
		}
	case "show":
		switch {
		case len(pos) > 1 || (len(pos) == 1 && (f.Key != "" || a.seqArg != "")) || (f.Key != "" && a.seqArg != ""):
			return errors.New("give one KEY or SEQ")
		case len(pos) == 1 && isDigits(pos[0]):
			a.seqArg = pos[0]
		case len(pos) == 1:
			f.Key = pos[0]
		case f.Key == "" && a.seqArg == "":
			return errors.New("give a KEY or SEQ")
		}
	case "redrive":
		if len(pos) > 0 {
			return errors.New("unexpected arguments (select with --all, --key, --code or --reason)")
		}
		if strings.TrimSpace(a.c.topo.LedgerBucket) == "" {
			return errors.New("--ledger-bucket must not be empty")
		}
		if a.all == (*f != client.DeadLetterFilter{}) {
			return errors.New("select with exactly one of --all, or --key / --code / --reason (these combine)")
		}
		for _, s := range a.sets {
			e, err := redrive.ParseEdit(s)
			if err != nil {
				return err
			}
			a.edits = append(a.edits, e)
		}
	}
	return nil
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, dlqUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	a := &dlqArgs{sub: args[0], c: newConfig()}
	if a.sub != "list" && a.sub != "show" && a.sub != "redrive" {
		fmt.Fprintf(stderr, "enqueue dlq: unknown command %q\n\n%s", submit.SafeFieldName(a.sub), dlqUsage)
		return exitUsage
	}
	fs := flag.NewFlagSet("enqueue dlq "+a.sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, dlqUsage)
		fs.PrintDefaults()
	}
	pos, err := parseFlags(fs, a.flags(), args[1:], getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	a.positional = pos
	if err == nil {
		err = a.c.validateCommon()
	}
	if err == nil {
		err = a.check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq %s: %s\n", a.sub, strings.ReplaceAll(err.Error(), "\n", "; "))
		return exitUsage
	}
	s, err := connect(ctx, a.c, stderr, slog.LevelWarn)
	if err == nil {
		_, err = requireStream(ctx, s.js, a.c.topo.DLQStream)
		if err != nil {
			s.close()
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq %s: %v\n", a.sub, err)
		return exitFailed
	}
	defer s.close()
	switch a.sub {
	case "list":
		return dlqList(ctx, s, a, stdout, stderr)
	case "show":
		return dlqShow(ctx, s, a, stdout, stderr)
	}
	return dlqRedrive(ctx, s, a, stdout, stderr)
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

// listEntry is the --json form of a dead letter in dlq list.
type listEntry struct {
	Seq        uint64    `json:"seq"`
	Key        string    `json:"key"`
	Reason     string    `json:"reason"`
	Code       string    `json:"code"`
	Field      string    `json:"field,omitempty"`
	FailedAt   time.Time `json:"failed_at"`
	Attempts   int       `json:"attempts"`
	Deliveries uint64    `json:"deliveries"`
	Raw        bool      `json:"raw,omitempty"`
	Unreadable bool      `json:"unreadable,omitempty"`
}

func newListEntry(d client.StoredDeadLetter) listEntry {
	le := listEntry{Seq: d.Sequence, Key: d.Key, Reason: string(d.Reason()), Code: d.Code(), FailedAt: d.FailedAt().UTC(), Unreadable: d.DeadLetter == nil}
	if dl := d.DeadLetter; dl != nil {
		le.Field, le.Attempts, le.Deliveries = dl.Error.Field, dl.Attempts, dl.Deliveries
		le.Raw = len(dl.Request) == 0
	}
	return le
}

func dlqList(ctx context.Context, s *session, a *dlqArgs, stdout, stderr io.Writer) int {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !a.jsonOut {
		fmt.Fprintln(tw, "SEQ\tKEY\tREASON\tCODE\tFAILED AT\tATTEMPTS")
	}
	enc := json.NewEncoder(stdout)
	n, total := 0, 0
	for d, err := range s.client.DeadLetters(ctx, client.DeadLetterFilter{}) {
		if err == nil {
			err = listOne(tw, enc, a, d, &n)
		}
		if err != nil {
			fmt.Fprintf(stderr, "enqueue dlq list: %v\n", err)
			return exitFailed
		}
		total++
	}
	if !a.jsonOut {
		tw.Flush()
	}
	fmt.Fprintf(stderr, "enqueue dlq list: %d of %d dead letters\n", n, total)
	return exitOK
}

func listOne(tw io.Writer, enc *json.Encoder, a *dlqArgs, d client.StoredDeadLetter, n *int) error {
	if !a.filter.Match(d) {
		return nil
	}
	*n++
	le := newListEntry(d)
	if a.jsonOut {
		return enc.Encode(le)
	}
	attempts := "-"
	if d.DeadLetter != nil {
		attempts = strconv.Itoa(le.Attempts)
	}
	_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", le.Seq, printable(orDash(le.Key)), printable(orDash(le.Reason)),
		printable(orDash(le.Code)), le.FailedAt.Format(time.RFC3339), attempts)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dlqShow(ctx context.Context, s *session, a *dlqArgs, stdout, stderr io.Writer) int {
	var d client.StoredDeadLetter
	var err error
	missing := "for key " + a.filter.Key
	if a.seqArg != "" {
		seq, perr := strconv.ParseUint(a.seqArg, 10, 64)
		if perr != nil || seq == 0 {
			fmt.Fprintln(stderr, "enqueue dlq show: --seq must be a positive integer")
			return exitUsage
		}
		missing = "at sequence " + a.seqArg
		d, err = s.client.DeadLetterAt(ctx, seq)
	} else {
		if kerr := client.ValidateKey(a.filter.Key); kerr != nil {
			fmt.Fprintf(stderr, "enqueue dlq show: %v\n", kerr)
			return exitUsage
		}
		d, err = s.client.LatestDeadLetter(ctx, a.filter.Key)
	}
	if errors.Is(err, client.ErrNotFound) {
		fmt.Fprintf(stderr, "enqueue dlq show: no dead letter %s\n", missing)
		return exitFailed
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq show: %v\n", err)
		return exitFailed
	}
	var out bytes.Buffer
	if err := json.Indent(&out, d.Data, "", "  "); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq show: sequence %d is not JSON\n", d.Sequence)
		return exitFailed
	}
	out.WriteByte('\n')
	fmt.Fprintf(stderr, "# dead letter at sequence %d, stored %s, reason %s, code %s\n", d.Sequence,
		d.Stored.UTC().Format(time.RFC3339), orDash(printable(d.Header.Get(client.HeaderReason))), orDash(printable(d.Header.Get(client.HeaderErrorCode))))
	if _, err := stdout.Write(out.Bytes()); err != nil {
		return exitFailed
	}
	return exitOK
}

// dlqRedrive plans the redrive (internal/redrive holds the rules), prints
// it, and unless --dry-run carries it out, stopping at a failed publish.
func dlqRedrive(ctx context.Context, s *session, a *dlqArgs, stdout, stderr io.Writer) int {
	if _, err := requireStream(ctx, s.js, a.c.topo.ResultsStream); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v\n", err)
		return exitFailed
	}
	guard := redrive.OpenGuard(ctx, s.js, a.c.topo.LedgerBucket, a.c.limits)
	if err := guard.OpenErr(); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v: edited dead letters are refused; unedited ones are redriven without the ledger check (the worker checks them at delivery)\n", err)
	}
	plan, err := redrive.Planner{Client: s.client, Guard: guard, Limits: a.c.limits}.Plan(ctx, a.filter, a.edits)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v\n", err)
		return exitFailed
	}
	if len(plan.Steps) == 0 {
		fmt.Fprintf(stderr, "enqueue dlq redrive: no dead letter matches (%d read)\n", plan.Scanned)
		return exitFailed
	}
	t := redriveTally{dryRun: a.dryRun, ledgerBound: guard.OpenErr() == nil}
	for _, st := range plan.Steps {
		if !t.step(ctx, s, st, stdout, stderr) {
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
func (t *redriveTally) step(ctx context.Context, s *session, st redrive.Step, stdout, stderr io.Writer) bool {
	d := st.Dead
	switch st.Kind {
	case redrive.Skip:
		t.skipped++
		if st.Refused {
			t.refused++
		}
		fmt.Fprintf(stdout, "skipped seq=%d key=%s: %s\n", d.Sequence, printable(orDash(d.Key)), printable(st.Why))
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
		} else if err := redrive.Execute(ctx, s.client, st); err != nil {
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
		} else if err := redrive.Execute(ctx, s.client, st); err != nil {
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
		return exitFailed
	}
	return exitOK
}
