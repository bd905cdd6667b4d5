package operate

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/settings"
)

const batchUsage = `Usage: enqueue batch show [flags] ID
       enqueue batch cancel [flags] ID

A batch is the requests of one enqueue run (its --batch ID, printed when it starts) or
any requests a producer published with the Omicsq-Batch header. See docs/lifecycle.md,
"Batches".

show    prints the batch's record, its members counted by status, and one line per
        member: where it was read (sheet row), key, run group and status (pending,
        submitted, the group's status, or dead_lettered:REASON). --json prints one
        JSON object instead.
cancel  marks the batch cancelled: workers dead-letter its requests not yet submitted
        (reason batch_cancelled, no API call) and the run tracker terminates its run
        groups still running (TerminateRunGroup), so the batch completes with them
        counted as cancelled. Cancelling again changes nothing.

Exit status: 0 success; 1 the batch is unknown, or an error; 64 usage error.

`

// batchCmd is a parsed enqueue batch command line.
type batchCmd struct {
	c      *Config
	asJSON bool
	id     string
}

// Batch runs enqueue batch (args are those after "batch"): show or cancel
// a batch. It returns the exit status.
func Batch(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	b := &batchCmd{c: NewConfig()}
	return command{"enqueue batch", batchUsage, []string{"show", "cancel"}, b.c, b}.run(ctx, args, stdout, stderr, getenv)
}

func (b *batchCmd) flags(sub string) []settings.Setting {
	fs := slices.Concat(b.c.ConnFlags(), b.c.TopoFlags())
	if sub == "show" {
		fs = append(fs, settings.Row("json", "", "print one JSON object: the record, the counts and every member", settings.Bool(&b.asJSON, false)))
	}
	return fs
}

func (b *batchCmd) check(_ string, pos []string) error {
	if len(pos) != 1 {
		return errors.New("give one batch ID")
	}
	if strings.TrimSpace(b.c.Topo.BatchesBucket) == "" {
		return errors.New("--batches-bucket must not be empty")
	}
	if err := client.ValidateBatch(pos[0]); err != nil {
		return err
	}
	b.id = pos[0]
	return nil
}

func (b *batchCmd) run(ctx context.Context, sub string, s *Session, stdout, stderr io.Writer) int {
	name := "enqueue batch " + sub
	if _, err := s.bucket(ctx, b.c.Topo.BatchesBucket); err != nil {
		return failed(stderr, name, err)
	}
	if sub == "cancel" {
		return b.cancel(ctx, s, stdout, stderr)
	}
	rec, ms, err := s.Client.Batch(ctx, b.id)
	if err != nil {
		return failed(stderr, name, err)
	}
	if b.asJSON {
		return printBatchJSON(stdout, rec, ms)
	}
	printBatch(stdout, rec, ms)
	return ExitOK
}

func (b *batchCmd) cancel(ctx context.Context, s *Session, stdout, stderr io.Writer) int {
	rec, err := s.Client.CancelBatch(ctx, b.id)
	if err != nil {
		return failed(stderr, "enqueue batch cancel", err)
	}
	_, ms, err := s.Client.Batch(ctx, b.id)
	if err != nil {
		return failed(stderr, "enqueue batch cancel", err)
	}
	c := client.CountBatch(ms)
	fmt.Fprintf(stdout, "batch %s cancelled at %s: %d of %d members not ended (%d with a run group, which the tracker terminates; the others are refused by the workers)\n",
		Printable(b.id), rec.CancelledAt.Format(time.RFC3339), c.Members-c.Terminal, c.Members, runningWithGroup(ms))
	return ExitOK
}

func runningWithGroup(ms []client.BatchMember) int {
	n := 0
	for _, m := range ms {
		if !m.Terminal && m.RunGroupID != "" {
			n++
		}
	}
	return n
}

// memberStatus is the one word that says where a member stands.
func memberStatus(m client.BatchMember) string {
	switch {
	case m.DeadLettered:
		return "dead_lettered:" + string(m.Reason)
	case m.Status != "":
		return strings.ToLower(m.Status)
	case m.RunGroupID != "":
		return "submitted"
	}
	return "pending"
}

// sortMembers orders members by where they were read, then by key.
func sortMembers(ms []client.BatchMember) {
	slices.SortFunc(ms, func(a, b client.BatchMember) int {
		return cmp.Or(cmp.Compare(a.Location, b.Location), cmp.Compare(a.Key, b.Key))
	})
}

// statusCounts counts members by memberStatus, dead letters by reason
// together.
func statusCounts(ms []client.BatchMember) map[string]int {
	out := map[string]int{}
	for _, m := range ms {
		s := memberStatus(m)
		if m.DeadLettered {
			s = client.BatchDeadLettered
		}
		out[s]++
	}
	return out
}

func printBatch(w io.Writer, rec client.BatchRecord, ms []client.BatchMember) {
	sortMembers(ms)
	c := client.CountBatch(ms)
	size := "unknown (not registered)"
	if rec.Members > 0 {
		size = fmt.Sprint(rec.Members)
	}
	fmt.Fprintf(w, "batch %s: %s members registered, %d recorded, %d ended", Printable(rec.ID), size, c.Members, c.Terminal)
	if !rec.CreatedAt.IsZero() {
		fmt.Fprintf(w, "; created %s", rec.CreatedAt.Format(time.RFC3339))
	}
	if rec.CancelledAt != nil {
		fmt.Fprintf(w, "; cancelled %s", rec.CancelledAt.Format(time.RFC3339))
	}
	if rec.CompletedAt != nil {
		fmt.Fprintf(w, "; completed %s", rec.CompletedAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	counts := statusCounts(ms)
	words := make([]string, 0, len(counts))
	for s := range counts {
		words = append(words, s)
	}
	slices.Sort(words)
	line := "by status:"
	for _, s := range words {
		line += fmt.Sprintf(" %d %s", counts[s], s)
	}
	fmt.Fprintf(w, "%s; outcomes: %d succeeded, %d failed, %d dead_lettered, %d cancelled\n", line, c.Succeeded, c.Failed, c.DeadLettered, c.Cancelled)
	t := newTable(w, false, "LOCATION", "KEY", "RUN GROUP", "STATUS")
	for _, m := range ms {
		_ = t.row(nil, orDash(Printable(m.Location)), Printable(m.Key), orDash(Printable(m.RunGroupID)), memberStatus(m))
	}
	t.flush()
}

func printBatchJSON(w io.Writer, rec client.BatchRecord, ms []client.BatchMember) int {
	sortMembers(ms)
	c := client.CountBatch(ms)
	out := struct {
		Batch    client.BatchRecord   `json:"batch"`
		ByStatus map[string]int       `json:"by_status"`
		Outcomes map[string]int       `json:"outcomes"`
		Members  []client.BatchMember `json:"members"`
	}{rec, statusCounts(ms), map[string]int{client.BatchSucceeded: c.Succeeded, client.BatchFailed: c.Failed,
		client.BatchDeadLettered: c.DeadLettered, client.BatchCancelled: c.Cancelled}, ms}
	if err := newTable(w, true).row(out); err != nil {
		return ExitFailed
	}
	return ExitOK
}

// BatchFailedKeys returns the keys of batch id's members whose run group
// ended Failed: those enqueue runs retry --batch retries. A Terminated
// group counts as cancelled (someone stopped it on purpose): retry its key
// by name if it is wanted.
func BatchFailedKeys(ctx context.Context, cl *client.Client, id string) ([]string, error) {
	_, ms, err := cl.Batch(ctx, id)
	if err != nil {
		return nil, err
	}
	sortMembers(ms)
	var keys []string
	for _, m := range ms {
		if m.RunGroupID != "" && m.Outcome() == client.BatchFailed {
			keys = append(keys, m.Key)
		}
	}
	return keys, nil
}

// NewBatchID is the batch ID of an enqueue run given none:
// enqueue-<UTC yyyymmddThhmmssZ>-<6 hex digits>.
func NewBatchID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "enqueue-" + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// RegisterSheet registers items as batch id before they are published,
// each member with its sheet location, and returns the batch to publish
// them in. A fleet without the batches bucket (an older one, or batches
// turned off) gets a warning and no batch: publishing goes on without.
func RegisterSheet(ctx context.Context, s *Session, bucket, id string, items []samplesheet.Request, stderr io.Writer) (string, error) {
	if strings.TrimSpace(bucket) == "" {
		return "", nil
	}
	// Batches are an addition: a fleet or a user without them still gets
	// its requests published.
	if _, err := s.JS.KeyValue(ctx, bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		fmt.Fprintf(stderr, "enqueue: bucket %s not found (workers with the run tracker create it): publishing without a batch\n", bucket)
		return "", nil
	} else if err != nil {
		fmt.Fprintf(stderr, "enqueue: bucket %s: %v: publishing without a batch\n", bucket, err)
		return "", nil
	}
	ms := make([]client.BatchMember, len(items))
	for i, it := range items {
		ms[i] = client.BatchMember{Key: it.Key, Location: it.Loc.String()}
	}
	start := time.Now()
	if err := s.Client.RegisterBatch(ctx, id, ms); err != nil {
		return "", fmt.Errorf("register batch %s: %w", Printable(id), err)
	}
	fmt.Fprintf(stderr, "enqueue: batch %s: %d members registered in %v (enqueue batch show %s)\n",
		Printable(id), len(ms), time.Since(start).Round(time.Millisecond), Printable(id))
	return id, nil
}
