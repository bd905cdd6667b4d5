package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/natsconn"
	"github.com/omicsq/omicsq/internal/queue"
	"github.com/omicsq/omicsq/internal/submission"
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

// dlqEntry is one message of the dead-letter stream.
type dlqEntry struct {
	seq     uint64
	subject string
	stored  time.Time
	header  nats.Header
	data    []byte
	dl      *client.DeadLetter // nil when the body is not a dead-letter document
	key     string
}

func newEntry(seq uint64, subject string, stored time.Time, h nats.Header, data []byte) dlqEntry {
	e := dlqEntry{seq: seq, subject: subject, stored: stored, header: h, data: data, key: h.Get(client.HeaderKey)}
	if d, err := client.DecodeDeadLetter(data); err == nil {
		e.dl = &d
		e.key = d.Key
	}
	return e
}

func (e dlqEntry) code() string {
	if e.dl != nil && e.dl.Error.Code != "" {
		return e.dl.Error.Code
	}
	return e.header.Get(client.HeaderErrorCode)
}

func (e dlqEntry) reason() string {
	if e.dl != nil {
		return string(e.dl.Reason)
	}
	return e.header.Get(client.HeaderReason)
}

func (e dlqEntry) failedAt() time.Time {
	if e.dl != nil && !e.dl.FailedAt.IsZero() {
		return e.dl.FailedAt
	}
	return e.stored
}

// dlqFilter selects dead letters; empty fields match everything.
type dlqFilter struct {
	key, code, reason string
}

func (f dlqFilter) match(e dlqEntry) bool {
	return (f.key == "" || e.key == f.key) && (f.code == "" || e.code() == f.code) && (f.reason == "" || e.reason() == f.reason)
}

// stringsFlag collects a repeatable flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// dlqSession is a connection to the streams the DLQ commands use.
type dlqSession struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	dlq jetstream.Stream
}

func openDLQ(ctx context.Context, c *config, stderr io.Writer) (*dlqSession, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, c.conn, log, natsconn.Hooks{})
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	dlq, err := requireStream(ctx, js, c.topo.DLQStream)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &dlqSession{nc: nc, js: js, dlq: dlq}, nil
}

// scan reads every dead letter stored when it starts, in sequence order,
// with an ordered consumer.
func (s *dlqSession) scan(ctx context.Context, t queue.Topology) ([]dlqEntry, error) {
	info, err := s.dlq.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", t.DLQStream, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	last := info.State.LastSeq
	cons, err := s.dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{t.DLQPrefix + ".>"},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.DLQStream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.DLQStream, err)
	}
	defer it.Stop()
	var out []dlqEntry
	for {
		m, err := it.Next(jetstream.NextMaxWait(2 * time.Second))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				return out, nil // messages deleted meanwhile: nothing more
			}
			return out, fmt.Errorf("read %s: %w", t.DLQStream, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return out, fmt.Errorf("read %s: %w", t.DLQStream, err)
		}
		out = append(out, newEntry(md.Sequence.Stream, m.Subject(), md.Timestamp, m.Headers(), m.Data()))
		if md.NumPending == 0 || md.Sequence.Stream >= last {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return out, err
		}
	}
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, dlqUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub := args[0]
	c := newConfig()
	fs := flag.NewFlagSet("enqueue dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, dlqUsage)
		fs.PrintDefaults()
	}
	defs := append(connFlags(c), topoFlags(c)...)
	var f dlqFilter
	var jsonOut, all, dryRun bool
	var seqArg string
	var sets stringsFlag
	switch sub {
	case "list":
		defs = append(defs,
			flagDef{"code", "", "only dead letters with this error code", strFlag(&f.code, "")},
			flagDef{"reason", "", "only dead letters with this reason", strFlag(&f.reason, "")},
			flagDef{"key", "", "only dead letters of this key", strFlag(&f.key, "")},
			flagDef{"json", "", "print one JSON object per dead letter", boolFlag(&jsonOut)})
	case "show":
		defs = append(defs,
			flagDef{"key", "", "show the latest dead letter of this key", strFlag(&f.key, "")},
			flagDef{"seq", "", "show the dead letter at this stream sequence", strFlag(&seqArg, "")})
	case "redrive":
		defs = append(defs, limitFlags(c)...)
		defs = append(defs,
			flagDef{"ledger-bucket", "OMICSQ_LEDGER_BUCKET", "KV bucket of the submission ledger (read to refuse edits that could create a second run group)",
				strFlag(&c.topo.LedgerBucket, queue.DefaultTopology().LedgerBucket)},
			flagDef{"all", "", "redrive every dead letter", boolFlag(&all)},
			flagDef{"key", "", "redrive the dead letters of this key", strFlag(&f.key, "")},
			flagDef{"code", "", "redrive the dead letters with this error code", strFlag(&f.code, "")},
			flagDef{"reason", "", "redrive the dead letters with this reason", strFlag(&f.reason, "")},
			flagDef{"dry-run", "", "print what would be redriven; change nothing", boolFlag(&dryRun)},
			flagDef{"set", "", "edit the request before redriving: Field=Value (repeatable)", func(fs *flag.FlagSet, n, u string) { fs.Var(&sets, n, u) }})
	default:
		fmt.Fprintf(stderr, "enqueue dlq: unknown command %q\n\n%s", submit.SafeFieldName(sub), dlqUsage)
		return exitUsage
	}
	pos, err := parseFlags(fs, defs, args[1:], getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "enqueue dlq %s: %s\n", sub, fmt.Sprintf(format, a...))
		return exitUsage
	}
	if err != nil {
		return usage("%v", err)
	}
	if err := c.validateCommon(); err != nil {
		return usage("%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	var edits []setEdit
	switch sub {
	case "list":
		if len(pos) > 0 {
			return usage("unexpected arguments")
		}
	case "show":
		switch {
		case len(pos) > 1 || (len(pos) == 1 && (f.key != "" || seqArg != "")) || (f.key != "" && seqArg != ""):
			return usage("give one KEY or SEQ")
		case len(pos) == 1 && isDigits(pos[0]):
			seqArg = pos[0]
		case len(pos) == 1:
			f.key = pos[0]
		case f.key == "" && seqArg == "":
			return usage("give a KEY or SEQ")
		}
	case "redrive":
		if len(pos) > 0 {
			return usage("unexpected arguments (select with --all, --key, --code or --reason)")
		}
		if strings.TrimSpace(c.topo.LedgerBucket) == "" {
			return usage("--ledger-bucket must not be empty")
		}
		selectors := f != dlqFilter{}
		if all == selectors {
			return usage("select with exactly one of --all, or --key / --code / --reason (these combine)")
		}
		for _, s := range sets {
			e, err := parseSet(s)
			if err != nil {
				return usage("%v", err)
			}
			edits = append(edits, e)
		}
	}

	s, err := openDLQ(ctx, c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq %s: %v\n", sub, err)
		return exitFailed
	}
	defer s.nc.Close()
	switch sub {
	case "list":
		return dlqList(ctx, s, c, f, jsonOut, stdout, stderr)
	case "show":
		return dlqShow(ctx, s, c, f.key, seqArg, stdout, stderr)
	default:
		return dlqRedrive(ctx, s, c, f, edits, dryRun, stdout, stderr)
	}
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

func dlqList(ctx context.Context, s *dlqSession, c *config, f dlqFilter, jsonOut bool, stdout, stderr io.Writer) int {
	entries, err := s.scan(ctx, c.topo)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq list: %v\n", err)
		return exitFailed
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !jsonOut {
		fmt.Fprintln(tw, "SEQ\tKEY\tREASON\tCODE\tFAILED AT\tATTEMPTS")
	}
	enc := json.NewEncoder(stdout)
	n := 0
	for _, e := range entries {
		if !f.match(e) {
			continue
		}
		n++
		le := listEntry{Seq: e.seq, Key: e.key, Reason: e.reason(), Code: e.code(), FailedAt: e.failedAt().UTC(), Unreadable: e.dl == nil}
		if e.dl != nil {
			le.Field, le.Attempts, le.Deliveries = e.dl.Error.Field, e.dl.Attempts, e.dl.Deliveries
			le.Raw = len(e.dl.Request) == 0
		}
		if jsonOut {
			if err := enc.Encode(le); err != nil {
				fmt.Fprintf(stderr, "enqueue dlq list: %v\n", err)
				return exitFailed
			}
			continue
		}
		attempts := "-"
		if e.dl != nil {
			attempts = strconv.Itoa(e.dl.Attempts)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", le.Seq, printable(orDash(le.Key)), printable(orDash(le.Reason)),
			printable(orDash(le.Code)), le.FailedAt.Format(time.RFC3339), attempts)
	}
	if !jsonOut {
		tw.Flush()
	}
	fmt.Fprintf(stderr, "enqueue dlq list: %d of %d dead letters\n", n, len(entries))
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dlqShow(ctx context.Context, s *dlqSession, c *config, key, seqArg string, stdout, stderr io.Writer) int {
	var m *jetstream.RawStreamMsg
	var err error
	if seqArg != "" {
		seq, perr := strconv.ParseUint(seqArg, 10, 64)
		if perr != nil || seq == 0 {
			fmt.Fprintln(stderr, "enqueue dlq show: --seq must be a positive integer")
			return exitUsage
		}
		m, err = s.dlq.GetMsg(ctx, seq)
	} else {
		if kerr := client.ValidateKey(key); kerr != nil {
			fmt.Fprintf(stderr, "enqueue dlq show: %v\n", kerr)
			return exitUsage
		}
		m, err = s.dlq.GetLastMsgForSubject(ctx, c.topo.DLQSubject(key))
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		if seqArg != "" {
			fmt.Fprintf(stderr, "enqueue dlq show: no dead letter at sequence %s\n", seqArg)
		} else {
			fmt.Fprintf(stderr, "enqueue dlq show: no dead letter for key %s\n", key)
		}
		return exitFailed
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq show: %v\n", err)
		return exitFailed
	}
	if !strings.HasPrefix(m.Subject, c.topo.DLQPrefix+".") {
		fmt.Fprintf(stderr, "enqueue dlq show: sequence %d is not a dead letter (subject outside %s.>)\n", m.Sequence, c.topo.DLQPrefix)
		return exitFailed
	}
	var out bytes.Buffer
	if err := json.Indent(&out, m.Data, "", "  "); err != nil {
		fmt.Fprintf(stderr, "enqueue dlq show: sequence %d is not JSON\n", m.Sequence)
		return exitFailed
	}
	out.WriteByte('\n')
	fmt.Fprintf(stderr, "# dead letter at sequence %d, stored %s, reason %s, code %s\n", m.Sequence,
		m.Time.UTC().Format(time.RFC3339), orDash(printable(m.Header.Get(client.HeaderReason))), orDash(printable(m.Header.Get(client.HeaderErrorCode))))
	if _, err := stdout.Write(out.Bytes()); err != nil {
		return exitFailed
	}
	return exitOK
}

// setEdit is one --set Field=Value.
type setEdit struct {
	parent, field string // parent is "" for top-level fields
	value         json.RawMessage
	remove        bool
}

// parseSet parses Field=Value. The field must be a request field (or, to
// remove an unknown top-level field, any name with the value null).
func parseSet(s string) (setEdit, error) {
	name, val, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return setEdit{}, errors.New("--set wants Field=Value")
	}
	var e setEdit
	if v := []byte(val); json.Valid(v) {
		e.value = json.RawMessage(bytes.TrimSpace(v))
	} else {
		b, _ := json.Marshal(val)
		e.value = b
	}
	e.remove = string(e.value) == "null"
	if parent, field, nested := strings.Cut(name, "."); nested {
		e.parent, e.field = parent, field
	} else {
		e.field = name
	}
	if _, known := requestFields[name]; !known && !(e.remove && e.parent == "") {
		return setEdit{}, fmt.Errorf("--set: %s is not a RunApplication field (nested fields are Option.X and NFOption.X; Field=null removes an unknown top-level field)", submit.SafeFieldName(name))
	}
	return e, nil
}

// applyEdits returns request with the edits applied. Without edits the
// request is returned unchanged, so strict validation sees the original.
func applyEdits(request json.RawMessage, edits []setEdit) ([]byte, error) {
	if len(edits) == 0 {
		return request, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(request, &top); err != nil || top == nil {
		return nil, errors.New("the dead letter's request is not a JSON object")
	}
	for _, e := range edits {
		if e.parent == "" {
			if e.remove {
				delete(top, e.field)
			} else {
				top[e.field] = e.value
			}
			continue
		}
		sub := map[string]json.RawMessage{}
		if raw, ok := top[e.parent]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &sub); err != nil {
				return nil, fmt.Errorf("%s is not an object", e.parent)
			}
		}
		if e.remove {
			delete(sub, e.field)
		} else {
			sub[e.field] = e.value
		}
		if len(sub) == 0 {
			delete(top, e.parent)
			continue
		}
		b, err := json.Marshal(sub)
		if err != nil {
			return nil, err
		}
		top[e.parent] = b
	}
	return json.Marshal(top)
}

// identityGuard refuses to redrive, under a key that may already have
// created its run group, a request other than the one the key was first
// submitted with. The worker would refuse it at delivery (identity_changed);
// the guard gives the operator the answer at once and publishes nothing.
type identityGuard struct {
	l       *ledger.Ledger
	openErr error // the ledger bucket could not be bound
	bucket  string
	limits  submit.Limits
}

func openGuard(ctx context.Context, js jetstream.JetStream, bucket string, limits submit.Limits) *identityGuard {
	l, err := ledger.Open(ctx, js, bucket)
	return &identityGuard{l: l, openErr: err, bucket: bucket, limits: limits}
}

// refusalHead is how every identity refusal starts.
const refusalHead = "refused: a run group may already exist for this key's request as first submitted (ledger: maybe created); "

// check says why body, the request as it would be republished for key,
// must not be redriven ("" when it may). edited is whether --set edits were
// given. An edited request is refused when the ledger cannot be read (fail
// closed); an unedited one goes on, and unchecked says why it was not
// checked (the worker still checks it at delivery).
func (g *identityGuard) check(ctx context.Context, key string, body []byte, edited bool) (refusal string, unchecked error) {
	req, err := submit.DecodeRunApplication(body, g.limits)
	if err != nil { // p.finish has validated body: not expected
		return "refused: the request to redrive cannot be decoded to compare it with the ledger's record", nil
	}
	id := submission.IdentityOf(req, time.Now())
	lerr := g.openErr
	var entry ledger.Entry
	if lerr == nil {
		entry, _, lerr = g.l.Get(ctx, key)
	}
	if lerr != nil {
		if !edited {
			return "", lerr
		}
		return fmt.Sprintf("refused: the ledger (bucket %s) could not be read, so whether a run group may already exist "+
			"for this key cannot be checked (%v); an edited request is not redriven unchecked. Fix the ledger access "+
			"(--ledger-bucket, permissions) or redrive it without --set.", g.bucket, lerr), nil
	}
	if !entry.MaybeCreated || entry.Identity == nil || entry.Identity.Same(id) {
		return "", nil
	}
	what := entry.Identity.Differences(id)
	if edited {
		return refusalHead + "an edited " + what + " would not be the same request and could create a second run group. " +
			"Redrive it without --set, which looks the run group up first.", nil
	}
	// The dead letter itself carries another request than the key's first
	// (an identity_changed dead letter): redriving it as is fails again.
	return refusalHead + "this dead letter's " + what + " differs from it, so it is not the same request and could create " +
		"a second run group (the worker refuses it as identity_changed). Restore the first request with --set, or " +
		"submit this one under a new key.", nil
}

// dlqRedrive redrives the newest selected dead letter of each key and
// deletes the older selected ones of that key as superseded. A key whose
// newest dead letter is not selected, or that already has a result, is
// skipped, and so is one whose request the ledger refuses (identityGuard).
func dlqRedrive(ctx context.Context, s *dlqSession, c *config, f dlqFilter, edits []setEdit, dryRun bool, stdout, stderr io.Writer) int {
	entries, err := s.scan(ctx, c.topo)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v\n", err)
		return exitFailed
	}
	results, err := requireStream(ctx, s.js, c.topo.ResultsStream)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v\n", err)
		return exitFailed
	}
	newest := map[string]uint64{}
	byKey := map[string][]dlqEntry{}
	var keys []string
	for _, e := range entries {
		newest[e.key] = max(newest[e.key], e.seq)
		if !f.match(e) {
			continue
		}
		if _, ok := byKey[e.key]; !ok {
			keys = append(keys, e.key)
		}
		byKey[e.key] = append(byKey[e.key], e)
	}
	if len(keys) == 0 {
		fmt.Fprintf(stderr, "enqueue dlq redrive: no dead letter matches (%d in the stream)\n", len(entries))
		return exitFailed
	}
	guard := openGuard(ctx, s.js, c.topo.LedgerBucket, c.limits)
	if guard.openErr != nil {
		fmt.Fprintf(stderr, "enqueue dlq redrive: %v: edited dead letters are refused; unedited ones are redriven without the ledger check (the worker checks them at delivery)\n", guard.openErr)
	}
	p := &parser{lim: c.limits}
	verb, del := "redriven", "deleted"
	if dryRun {
		verb, del = "would redrive", "would delete"
	}
	var redriven, skipped, refused, failed int
	for _, key := range keys {
		group := byKey[key]
		slices.SortFunc(group, func(a, b dlqEntry) int { return cmp.Compare(b.seq, a.seq) })
		e, older := group[0], group[1:]
		skip := func(reason string) {
			for _, g := range group {
				skipped++
				fmt.Fprintf(stdout, "skipped seq=%d key=%s: %s\n", g.seq, printable(orDash(g.key)), reason)
			}
		}
		switch {
		case newest[key] > e.seq:
			skip(fmt.Sprintf("superseded by seq %d, which the selection does not match", newest[key]))
			continue
		case e.dl == nil:
			skip("not a dead-letter document")
			continue
		case len(e.dl.Request) == 0 || string(e.dl.Request) == "null":
			skip("raw (non-JSON) dead letter: nothing to re-validate; fix and republish it by hand")
			continue
		}
		if m, err := results.GetLastMsgForSubject(ctx, c.topo.ResultSubject(key)); err == nil {
			rg := "unreadable"
			if r, err := client.DecodeResult(m.Data); err == nil {
				rg = r.RunGroupID
			}
			skip("the key already has a result (run group " + printable(rg) + ")")
			continue
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d: look up result: %v\n", e.seq, err)
			failed++
			continue
		}
		body, err := applyEdits(e.dl.Request, edits)
		if err != nil {
			skip("--set: " + err.Error())
			continue
		}
		it, ierr := p.finish(location{File: fmt.Sprintf("seq=%d", e.seq), Index: -1}, body, key, true)
		if ierr != nil {
			skip("re-validation failed: " + strings.TrimPrefix(ierr.Error(), ierr.Loc.detail()+": "))
			continue
		}
		refusal, unchecked := guard.check(ctx, key, it.Body, len(edits) > 0)
		if refusal != "" {
			refused += len(group)
			skip(refusal)
			continue
		}
		if unchecked != nil && guard.openErr == nil {
			fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d key=%s: %v: redriven without the ledger check (the worker checks it at delivery)\n", e.seq, key, unchecked)
		}
		if !dryRun {
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			err := queue.RedriveRequest(pctx, s.js, c.topo, key, e.seq, it.Body)
			cancel()
			if err != nil {
				fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d key=%s: %v\n", e.seq, key, err)
				failed++
				break
			}
			if err := s.dlq.DeleteMsg(ctx, e.seq); err != nil {
				fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d key=%s: redriven, but not deleted from %s: %v\n", e.seq, key, c.topo.DLQStream, err)
				failed++
				continue
			}
		}
		redriven++
		fmt.Fprintf(stdout, "%s seq=%d key=%s\n", verb, e.seq, key)
		for _, o := range older {
			if !dryRun {
				if err := s.dlq.DeleteMsg(ctx, o.seq); err != nil {
					fmt.Fprintf(stderr, "enqueue dlq redrive: seq=%d: delete: %v\n", o.seq, err)
					failed++
					continue
				}
			}
			fmt.Fprintf(stdout, "%s seq=%d key=%s: superseded by seq %d\n", del, o.seq, key, e.seq)
		}
	}
	summary := fmt.Sprintf("enqueue dlq redrive: %d %s, %d skipped", redriven, verb, skipped)
	if refused > 0 {
		summary += fmt.Sprintf(" (%d refused)", refused)
	}
	if failed > 0 {
		summary += fmt.Sprintf(", %d failed", failed)
	}
	fmt.Fprintln(stderr, summary)
	if skipped > 0 || failed > 0 {
		return exitFailed
	}
	return exitOK
}
