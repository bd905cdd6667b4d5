package rerun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/tracker"
)

// save writes the record over the revision read, claiming it for LeaseTTL.
// A conflict is errLost: someone else wrote it, so this process stops.
func (j *job) save(ctx context.Context) error {
	now := j.r.now().UTC()
	j.rec.Holder, j.rec.HeldUntil = j.r.holder, now.Add(j.r.cfg.LeaseTTL)
	return j.write(ctx)
}

// settle writes the record with its attempt settled and the claim given up.
func (j *job) settle(ctx context.Context) error {
	j.rec.Holder, j.rec.HeldUntil = "", time.Time{}
	return j.write(ctx)
}

func (j *job) write(ctx context.Context) error {
	j.rec.Key, j.rec.UpdatedAt = j.key, j.r.now().UTC()
	b, err := json.Marshal(j.rec)
	if err != nil {
		return err
	}
	var rev uint64
	if j.recRev == 0 {
		rev, err = j.r.record.Create(ctx, j.token, b)
	} else {
		rev, err = j.r.record.Update(ctx, j.token, b, j.recRev)
	}
	if isConflict(err) {
		return errLost
	}
	if err != nil {
		return fmt.Errorf("write the retry record: %w", err)
	}
	j.recRev = rev
	return nil
}

// release gives the claim up after a stop, so the next retry of the key
// need not wait for the lease; the open attempt stays as it is. Best
// effort: a failure leaves the lease to expire.
func (j *job) release(ctx context.Context) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	j.rec.Holder, j.rec.HeldUntil = "", time.Time{}
	if err := j.write(wctx); err != nil && !errors.Is(err, errLost) {
		j.r.log.Warn("could not release the retry record; the next retry waits for its lease", "key", j.key, "error", err)
	}
}

// force records a created attempt after the claim was lost meanwhile: the
// API said the group exists, so it is written into whatever the record
// holds now (the attempt with the same number and source).
func (j *job) force(ctx context.Context, a Attempt) error {
	for range 5 {
		kve, err := j.r.record.Get(ctx, j.token)
		if err != nil {
			return fmt.Errorf("read the retry record: %w", err)
		}
		var cur Record
		if err := json.Unmarshal(kve.Value(), &cur); err != nil {
			return err
		}
		if i := a.N - 1; i < len(cur.Attempts) && cur.Attempts[i].SourceGroup == a.SourceGroup {
			cur.Attempts[i] = a
		} else {
			cur.Attempts = append(cur.Attempts, a)
		}
		if cur.open() == nil {
			cur.Holder, cur.HeldUntil = "", time.Time{}
		}
		j.rec, j.recRev = cur, kve.Revision()
		if err := j.write(ctx); !errors.Is(err, errLost) {
			return err
		}
	}
	return errors.New("rerun: the retry record keeps changing")
}

// follow rewrites the key's runs entry to name group, over the revision
// read, so the tracker's leader follows it (tracker.Retried).
func (j *job) follow(ctx context.Context, group string) error {
	for range 5 {
		if j.entry.RunGroupID == group {
			return nil
		}
		b, err := json.Marshal(tracker.Retried(j.entry, group, j.r.now()))
		if err != nil {
			return err
		}
		_, err = j.r.runs.Update(ctx, j.token, b, j.entryRev)
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("write the runs entry: %w", err)
		}
		kve, err := j.r.runs.Get(ctx, j.token)
		if err != nil {
			return fmt.Errorf("read the runs entry: %w", err)
		}
		old := j.entry.RunGroupID
		if err := json.Unmarshal(kve.Value(), &j.entry); err != nil {
			return err
		}
		j.entryRev = kve.Revision()
		if j.entry.RunGroupID != old && j.entry.RunGroupID != group {
			return fmt.Errorf("rerun: the runs entry now follows run group %s, not %s", j.entry.RunGroupID, old)
		}
	}
	return errors.New("rerun: the runs entry keeps changing")
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
