package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/sandbox"
)

// The faults benchmark needs to know, per request, when the API saw a call
// or a lookup for it: the time from a worker's SIGKILL to the next call for
// a key that worker held. The sandbox's per-call record leaves parameter
// values out on purpose, so the harness serves the sandbox behind a tap: an
// http.Handler in front of sandbox.Server that reads the action and the Name
// (RunApplication's Name, DescribeRunGroups' Name filter) and the arrival
// time, and passes the request on unchanged (the ResponseWriter too, so the
// sandbox can still hijack the connection for a dropped or hung call). The
// tap puts its record in the request's context, where the recorder (the
// sandbox's logger) finds it and adds the outcome.

// tapCall is one API call as the tap saw it.
type tapCall struct {
	At     time.Time // when the request reached the tap (before the sandbox read it)
	Action string
	Name   string

	mu      sync.Mutex
	outcome string    // the sandbox's outcome; set when the sandbox logs the call
	done    time.Time // when the sandbox's handler returned
}

func (c *tapCall) Outcome() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outcome
}

func (c *tapCall) setOutcome(o string) {
	c.mu.Lock()
	c.outcome = o
	c.mu.Unlock()
}

type tapKey struct{}

// tapCallFrom returns the tap's record of the request ctx belongs to.
func tapCallFrom(ctx context.Context) *tapCall {
	if ctx == nil {
		return nil
	}
	c, _ := ctx.Value(tapKey{}).(*tapCall)
	return c
}

// tap serves a sandbox over HTTP and records every call.
type tap struct {
	next   http.Handler
	srv    *http.Server
	addr   string
	served chan struct{}

	mu    sync.Mutex
	calls []*tapCall
	open  int // calls inside the sandbox's handler now
}

func listenTap(ctx context.Context, addr string, sb *sandbox.Server) (*tap, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tap: listen: %w", err)
	}
	t := &tap{next: sb, addr: ln.Addr().String(), served: make(chan struct{})}
	t.srv = &http.Server{Handler: t, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(t.served)
		_ = t.srv.Serve(ln)
	}()
	return t, nil
}

func (t *tap) Addr() string { return t.addr }

// Close stops serving. Close the sandbox first: it releases held calls.
func (t *tap) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := t.srv.Shutdown(ctx)
	if err != nil {
		_ = t.srv.Close()
	}
	<-t.served
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // held connections were closed
	}
	return err
}

func (t *tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &tapCall{At: time.Now(), Action: r.Header.Get("X-TC-Action")}
	if r.Method == http.MethodPost && !strings.HasPrefix(r.URL.Path, "/sandbox/") {
		body, err := io.ReadAll(io.LimitReader(r.Body, sandbox.MaxBodyBytes+1))
		r.Body.Close()
		if err != nil {
			// The client went away mid-body: let the sandbox see the same.
			body = nil
		}
		c.Name = nameOf(c.Action, body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r = r.WithContext(context.WithValue(r.Context(), tapKey{}, c))
		t.mu.Lock()
		t.calls = append(t.calls, c)
		t.open++
		t.mu.Unlock()
		defer func() {
			now := time.Now()
			c.mu.Lock()
			c.done = now
			c.mu.Unlock()
			t.mu.Lock()
			t.open--
			t.mu.Unlock()
		}()
	}
	t.next.ServeHTTP(w, r)
}

// nameOf returns the run-group Name a call is about.
func nameOf(action string, body []byte) string {
	var b struct {
		Name    string
		Filters []struct {
			Name   string
			Values []string
		}
	}
	if json.Unmarshal(body, &b) != nil {
		return ""
	}
	if action == "DescribeRunGroups" {
		for _, f := range b.Filters {
			if f.Name == "Name" && len(f.Values) > 0 {
				return f.Values[0]
			}
		}
		return ""
	}
	return b.Name
}

// openNow returns the number of calls inside the sandbox right now.
func (t *tap) openNow() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}

// snapshot returns every call recorded, in arrival order.
func (t *tap) snapshot() []*tapCall {
	t.mu.Lock()
	out := slices.Clone(t.calls)
	t.mu.Unlock()
	slices.SortStableFunc(out, func(a, b *tapCall) int { return a.At.Compare(b.At) })
	return out
}

// ledgerWatch follows the submission ledger (a KV watch on the bucket) and
// keeps every update of every key, with the server's timestamp: it tells
// which keys a worker held when it was killed (a live lease or a started
// call of its own) and when another handler first touched them afterwards.
type ledgerWatch struct {
	w    jetstream.KeyWatcher
	done chan struct{}

	mu      sync.Mutex
	updates map[string][]ledgerUpdate // by request key
	bad     int                       // undecodable entries
}

type ledgerUpdate struct {
	At               time.Time
	State            ledger.State
	LeaseOwner       string
	LeaseUntil       time.Time
	InFlightOwner    string
	InFlightDeadline time.Time
}

func watchLedger(ctx context.Context, js jetstream.JetStream, bucket string) (*ledgerWatch, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("ledger watch: %w", err)
	}
	w, err := kv.WatchAll(context.WithoutCancel(ctx), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("ledger watch: %w", err)
	}
	lw := &ledgerWatch{w: w, done: make(chan struct{}), updates: make(map[string][]ledgerUpdate)}
	go func() {
		defer close(lw.done)
		for kve := range w.Updates() {
			if kve == nil {
				continue // end of the initial values
			}
			var e ledger.Entry
			if err := json.Unmarshal(kve.Value(), &e); err != nil {
				lw.mu.Lock()
				lw.bad++
				lw.mu.Unlock()
				continue
			}
			u := ledgerUpdate{At: kve.Created(), State: e.State, LeaseOwner: e.LeaseOwner, LeaseUntil: e.LeaseUntil}
			if e.InFlight != nil {
				u.InFlightOwner, u.InFlightDeadline = e.InFlight.Owner, e.InFlight.Deadline
			}
			lw.mu.Lock()
			lw.updates[e.Key] = append(lw.updates[e.Key], u)
			lw.mu.Unlock()
		}
	}()
	return lw, nil
}

func (lw *ledgerWatch) stop() {
	_ = lw.w.Stop()
	select {
	case <-lw.done:
	case <-time.After(5 * time.Second):
	}
}

// heldBy returns the keys whose latest update before at (plus slack for
// writes in transit) shows a live lease or a started call of worker id
// (lease owners are "<worker id>/<process nonce>/<handler>"), and whether
// that key had a call in flight.
func (lw *ledgerWatch) heldBy(id string, at time.Time, slack time.Duration) map[string]bool {
	prefix := id + "/"
	lw.mu.Lock()
	defer lw.mu.Unlock()
	held := map[string]bool{}
	for key, us := range lw.updates {
		var last *ledgerUpdate
		for i := range us {
			if us[i].At.Before(at.Add(slack)) {
				last = &us[i]
			}
		}
		if last == nil || last.State != ledger.StatePending {
			continue
		}
		inFlight := strings.HasPrefix(last.InFlightOwner, prefix) && last.InFlightDeadline.After(at)
		leased := strings.HasPrefix(last.LeaseOwner, prefix) && last.LeaseUntil.After(at)
		if inFlight || leased {
			held[key] = inFlight
		}
	}
	return held
}

// firstAfter returns the time of key's first update after t, if any.
func (lw *ledgerWatch) firstAfter(key string, t time.Time) (time.Time, bool) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	for _, u := range lw.updates[key] {
		if u.At.After(t) {
			return u.At, true
		}
	}
	return time.Time{}, false
}
