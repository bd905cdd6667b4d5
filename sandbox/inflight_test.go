package sandbox

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// openRunApplications returns how many RunApplication calls are open.
func openRunApplications(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.inflight.open {
		n += v
	}
	return n
}

// waitOpenRunApplications waits until n RunApplication calls are open: the
// server learns that a client left asynchronously.
func waitOpenRunApplications(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for openRunApplications(s) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d RunApplication calls open, want %d", openRunApplications(s), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRunApplicationOverlap: a second call for a Name while the first is
// held open counts as an overlap; the same Name in another project does
// not; and the first call stops being open when its client gives up.
func TestRunApplicationOverlap(t *testing.T) {
	t.Parallel()
	logs := &recordHandler{records: make(chan slog.Record, 64)}
	s, l := startSandbox(t, Options{Logger: slog.New(logs),
		Faults: Faults{CommitThenFailP: 1, CommitThenFailModes: []CommitFailMode{CommitFailHang}}})
	c := newClient(t, l.Addr(), defaultCred(), time.Minute)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.RunApplication(ctx, runRequest("twice"))
		errc <- err
	}()
	for r := range logs.records {
		if outcomeOf(r) == outcomeCommitPrefix+string(CommitFailHang) {
			break // the handler now holds the call, open
		}
	}
	if n := openRunApplications(s); n != 1 {
		t.Fatalf("%d calls open while one hangs, want 1", n)
	}
	if err := s.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	_, err := c.RunApplication(t.Context(), runRequest("twice"))
	if e, ok := errors.AsType[*submit.Error](err); !ok || !e.DuplicateName {
		t.Fatalf("concurrent second call: err = %v, want DuplicateName", err)
	}
	other := runRequest("twice")
	other.ProjectId = new("prj-other")
	if _, err := c.RunApplication(t.Context(), other); err != nil {
		t.Fatalf("same Name in another project: %v", err)
	}
	st := s.Stats()
	if st.MaxConcurrentRunApplicationPerName != 2 || st.ConcurrentRunApplicationOverlaps != 1 ||
		!slices.Equal(st.OverlappingNames, []string{"twice"}) {
		t.Errorf("with one call held: max %d, overlaps %d, names %q; want 2, 1, [twice]",
			st.MaxConcurrentRunApplicationPerName, st.ConcurrentRunApplicationOverlaps, st.OverlappingNames)
	}

	cancel() // the client gives up on the held call
	if err := <-errc; submit.ClassOf(err) != submit.ClassAmbiguous {
		t.Errorf("held call: err = %v, want ambiguous", err)
	}
	waitOpenRunApplications(t, s, 0)
	if _, err := c.RunApplication(t.Context(), runRequest("twice")); err == nil {
		t.Error("third call succeeded, want DuplicateName")
	}
	if st := s.Stats(); st.MaxConcurrentRunApplicationPerName != 2 || st.ConcurrentRunApplicationOverlaps != 1 {
		t.Errorf("after the client gave up: max %d, overlaps %d; want 2, 1 (no new overlap)",
			st.MaxConcurrentRunApplicationPerName, st.ConcurrentRunApplicationOverlaps)
	}
}

// TestRunApplicationSequentialNoOverlap: calls for one Name that never
// overlap leave the maximum at 1.
func TestRunApplicationSequentialNoOverlap(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	for i := range 3 {
		_, err := c.RunApplication(t.Context(), runRequest("once"))
		if i == 0 && err != nil {
			t.Fatalf("first call: %v", err)
		}
		if e, ok := errors.AsType[*submit.Error](err); i > 0 && (!ok || !e.DuplicateName) {
			t.Fatalf("call %d: err = %v, want DuplicateName", i, err)
		}
	}
	if _, err := c.RunApplication(t.Context(), runRequest("another")); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.MaxConcurrentRunApplicationPerName != 1 || st.ConcurrentRunApplicationOverlaps != 0 ||
		st.OverlappingNames == nil || len(st.OverlappingNames) != 0 {
		t.Errorf("sequential: max %d, overlaps %d, names %#v; want 1, 0, []",
			st.MaxConcurrentRunApplicationPerName, st.ConcurrentRunApplicationOverlaps, st.OverlappingNames)
	}
	if n := openRunApplications(s); n != 0 {
		t.Errorf("%d calls open after all were answered", n)
	}
}

// TestRunApplicationOpenEndsWhenClientLeaves: a call the server still holds
// (an injected latency) stops counting as open when its client times out,
// so the client's retry is not an overlap, though the first call is still
// processed later.
func TestRunApplicationOpenEndsWhenClientLeaves(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Faults: Faults{Latency: time.Minute, LatencyP: 1}})
	impatient := newClient(t, l.Addr(), defaultCred(), 200*time.Millisecond)
	_, err := impatient.RunApplication(t.Context(), runRequest("retried"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the client's deadline", err)
	}
	waitOpenRunApplications(t, s, 0)
	if n := len(s.RunGroups()); n != 0 {
		t.Fatalf("%d groups: the held call was processed already, want it still held", n)
	}

	if err := s.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	if _, err := c.RunApplication(t.Context(), runRequest("retried")); err != nil {
		t.Fatalf("retry: %v", err)
	}
	st := s.Stats()
	if st.MaxConcurrentRunApplicationPerName != 1 || st.ConcurrentRunApplicationOverlaps != 0 {
		t.Errorf("retry after the client left: max %d, overlaps %d; want 1, 0",
			st.MaxConcurrentRunApplicationPerName, st.ConcurrentRunApplicationOverlaps)
	}
	// Closing the listener releases the held call, which then finds its
	// Name taken and answers no one.
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st = s.Stats()
	if st.AnsweredAfterClientGone != 1 || st.DuplicateNameRejections != 1 || st.ConcurrentRunApplicationOverlaps != 0 {
		t.Errorf("after release: answered after gone %d, duplicates %d, overlaps %d; want 1, 1, 0",
			st.AnsweredAfterClientGone, st.DuplicateNameRejections, st.ConcurrentRunApplicationOverlaps)
	}
}

// TestInflightKey: Name and ProjectId are read leniently, and calls
// without a Name are not tracked.
func TestInflightKey(t *testing.T) {
	t.Parallel()
	def := func(name string) nameKey { return nameKey{projectKey{testRegion, DefaultProjectID}, name} }
	for body, want := range map[string]*nameKey{
		`{"Name":"a"}`:                                        new(def("a")),
		`{"Name":"a","ProjectId":"prj-1"}`:                    {projectKey{testRegion, "prj-1"}, "a"},
		`{"Name":"a","ProjectId":"` + DefaultProjectID + `"}`: new(def("a")),
		`{"ProjectId":7,"Name":"a"}`:                          new(def("a")),
		`{"Name":"a","Unknown":true,"Option":{}}`:             new(def("a")),
		`{"Name":""}`:                                         new(def("")),
		`{}`:                                                  nil,
		`{"Name":1}`:                                          nil,
		`{"Name":null}`:                                       nil,
		`[]`:                                                  nil,
		`not json`:                                            nil,
	} {
		got, ok := inflightKey([]byte(body), testRegion)
		if want == nil {
			if ok {
				t.Errorf("%s: tracked as %+v, want untracked", body, got)
			}
		} else if !ok || got != *want {
			t.Errorf("%s: key %+v (tracked %v), want %+v", body, got, ok, *want)
		}
	}
}
