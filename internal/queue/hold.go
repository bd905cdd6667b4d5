package queue

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/omicsq/omicsq/internal/ledger"
)

// errLeaseLost means the key's entry was taken over by another holder (this
// handler's lease had expired): the handler must stop acting on the key.
var errLeaseLost = errors.New("the lease on the key was lost")

// hold is a handler's view of the ledger entry of the key it holds. The
// handler and its lease renewer both write through it, so their
// compare-and-set writes never race each other.
type hold struct {
	led   LedgerStore
	key   string
	owner string

	mu    sync.Mutex
	entry ledger.Entry
	rev   uint64
}

// snapshot returns a copy of the entry that the caller may change freely.
func (h *hold) snapshot() ledger.Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyEntry(h.entry)
}

func copyEntry(e ledger.Entry) ledger.Entry {
	e.History = slices.Clone(e.History)
	if e.Identity != nil {
		id := *e.Identity
		e.Identity = &id
	}
	if e.InFlight != nil {
		f := *e.InFlight
		e.InFlight = &f
	}
	if e.Edits != nil {
		edits := make(map[string]string, len(e.Edits))
		for k, v := range e.Edits {
			edits[k] = v
		}
		e.Edits = edits
	}
	return e
}

// update applies change to the entry and writes it with compare-and-set.
// If somebody else wrote meanwhile, it re-reads: while the entry still names
// this handler's lease the change is applied again to the fresh entry;
// otherwise errLeaseLost.
func (h *hold) update(ctx context.Context, change func(*ledger.Entry)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for attempt := 0; ; attempt++ {
		next := copyEntry(h.entry)
		change(&next)
		rev, err := h.led.Put(ctx, next, h.rev)
		if err == nil {
			h.entry, h.rev = next, rev
			return nil
		}
		if !errors.Is(err, ledger.ErrConflict) || attempt >= 3 {
			return err
		}
		cur, rev, gerr := h.led.Get(ctx, h.key)
		if gerr != nil {
			return gerr
		}
		if cur.LeaseOwner != h.owner {
			return errLeaseLost
		}
		h.entry, h.rev = cur, rev
	}
}

// renew extends the lease if this handler still holds it; a final write
// (submitted, dead, released) has cleared it already.
func (h *hold) renew(ctx context.Context, until time.Time) error {
	h.mu.Lock()
	held := h.entry.LeaseOwner == h.owner
	h.mu.Unlock()
	if !held {
		return nil
	}
	return h.update(ctx, func(e *ledger.Entry) { e.Renew(h.owner, until) })
}
