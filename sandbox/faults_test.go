package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// TestCommitThenFail: in every mode the run group is created, the client
// gets an error it must classify as ambiguous, DescribeRunGroups then finds
// the group, and a resubmission is a DuplicateName.
func TestCommitThenFail(t *testing.T) {
	t.Parallel()
	for _, mode := range AllCommitFailModes {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			s, l := startSandbox(t, Options{Faults: Faults{CommitThenFailP: 1, CommitThenFailModes: []CommitFailMode{mode}}})
			// The hang mode lasts until the client gives up: keep it short.
			c := newClient(t, l.Addr(), defaultCred(), 500*time.Millisecond)
			name := "ctf-" + string(mode)

			_, err := c.RunApplication(t.Context(), runRequest(name))
			if err == nil {
				t.Fatal("RunApplication succeeded, want a commit-then-fail error")
			}
			if got := submit.ClassOf(err); got != submit.ClassAmbiguous {
				t.Fatalf("class = %v, want ambiguous (err %v)", got, err)
			}
			wantCode := map[CommitFailMode]string{
				CommitFailBadGateway: "ClientError.ParseJsonError",
				CommitFailDrop:       "ClientError.NetworkError",
				CommitFailHang:       "ClientError.NetworkError",
			}[mode]
			var se *submit.Error
			if !errors.As(err, &se) || se.Code != wantCode || se.RequestID != "" {
				t.Errorf("error = %v, want %s without RequestId", err, wantCode)
			}
			if mode == CommitFailHang && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("hang: err = %v, want a deadline", err)
			}

			if err := s.SetFaults(Faults{}); err != nil {
				t.Fatal(err)
			}
			found, err := c.FindRunGroupsByName(t.Context(), nil, name, nil)
			if err != nil {
				t.Fatalf("FindRunGroupsByName: %v", err)
			}
			if len(found) != 1 {
				t.Fatalf("found %d groups named %s, want 1", len(found), name)
			}
			_, err = c.RunApplication(t.Context(), runRequest(name))
			if e, ok := errors.AsType[*submit.Error](err); !ok || !e.DuplicateName {
				t.Errorf("resubmission: err = %v, want DuplicateName", err)
			}
			st := s.Stats()
			if st.FaultsInjected.CommitThenFail[mode] != 1 || st.Actions[actionRunApplication].Calls[outcomeCommitPrefix+string(mode)] != 1 {
				t.Errorf("stats: injected %v, calls %v; want one %s", st.FaultsInjected.CommitThenFail, st.Actions[actionRunApplication].Calls, mode)
			}
			if st.RunGroupsCreated != 1 {
				t.Errorf("RunGroupsCreated = %d, want 1", st.RunGroupsCreated)
			}
		})
	}
}

// TestCommitThenFailRoundRobin cycles through the modes in order.
func TestCommitThenFailRoundRobin(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Faults: Faults{CommitThenFailP: 1,
		CommitThenFailModes: []CommitFailMode{CommitFailBadGateway, CommitFailDrop}}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	for i := range 4 {
		_, err := c.RunApplication(t.Context(), runRequest(fmt.Sprintf("rr-%d", i)))
		if submit.ClassOf(err) != submit.ClassAmbiguous {
			t.Fatalf("call %d: err = %v, want ambiguous", i, err)
		}
	}
	got := s.Stats().FaultsInjected.CommitThenFail
	if got[CommitFailBadGateway] != 2 || got[CommitFailDrop] != 2 || len(s.RunGroups()) != 4 {
		t.Errorf("modes %v, %d groups; want 2 bad_gateway, 2 drop, 4 groups", got, len(s.RunGroups()))
	}
}

// TestInjectedErrors: InternalError creates nothing and is ambiguous to
// the client; an injected throttle is a plain RequestLimitExceeded.
func TestInjectedErrors(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Faults: Faults{InternalErrorP: 1}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	_, err := c.RunApplication(t.Context(), runRequest("ie"))
	if e, ok := errors.AsType[*submit.Error](err); !ok || e.Code != codeInternalError || e.Class != submit.ClassAmbiguous || e.RequestID == "" {
		t.Fatalf("err = %v, want InternalError (ambiguous, with RequestId)", err)
	}
	if n := len(s.RunGroups()); n != 0 {
		t.Errorf("%d groups after InternalError, want 0", n)
	}

	if err := s.SetFaults(Faults{ThrottleP: 1, Actions: []string{actionRunApplication}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.RunApplication(t.Context(), runRequest("th"))
	if e, ok := errors.AsType[*submit.Error](err); !ok || e.Code != codeRequestLimitExceeded || e.Class != submit.ClassThrottled {
		t.Fatalf("err = %v, want RequestLimitExceeded", err)
	}
	// Faults limited to RunApplication leave DescribeRunGroups alone.
	if _, err := c.DescribeRunGroups(t.Context(), nil); err != nil {
		t.Errorf("DescribeRunGroups with RunApplication-only faults: %v", err)
	}
	st := s.Stats()
	calls := st.Actions[actionRunApplication].Calls
	if calls[outcomeInternalError] != 1 || calls[outcomeThrottledFault] != 1 || st.FaultsInjected.InternalError != 1 || st.FaultsInjected.Throttle != 1 {
		t.Errorf("calls %v, injected %+v", calls, st.FaultsInjected)
	}
	// Injected throttles were admitted: the limiter's own count stays 0.
	if got := st.Actions[actionRunApplication].Throttled; got != 0 {
		t.Errorf("limiter Throttled = %d, want 0", got)
	}
}

// TestFaultsReproducible: the same seed gives the same fault sequence to a
// sequential client; another seed gives another.
func TestFaultsReproducible(t *testing.T) {
	t.Parallel()
	run := func(seed int64) string {
		_, l := startSandbox(t, Options{Seed: seed, Faults: Faults{InternalErrorP: 0.3, ThrottleP: 0.3}})
		c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
		var seq []byte
		for i := range 40 {
			_, err := c.RunApplication(t.Context(), runRequest(fmt.Sprintf("r-%d", i)))
			switch submit.ClassOf(err) {
			case 0:
				seq = append(seq, 'S')
			case submit.ClassAmbiguous:
				seq = append(seq, 'I')
			case submit.ClassThrottled:
				seq = append(seq, 'T')
			default:
				t.Fatalf("call %d: unexpected %v", i, err)
			}
		}
		return string(seq)
	}
	a, b, other := run(7), run(7), run(8)
	if a != b {
		t.Errorf("seed 7 gave %s then %s", a, b)
	}
	if a == other {
		t.Errorf("seeds 7 and 8 both gave %s", a)
	}
}

// TestLatencyOutlivesClient: the call is processed after the injected
// latency even though the client gave up: the group exists, and the stats
// say the answer found no one.
func TestLatencyOutlivesClient(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{Faults: Faults{Latency: time.Minute, LatencyP: 1}})
	c := newClient(t, l.Addr(), defaultCred(), 200*time.Millisecond)
	_, err := c.RunApplication(t.Context(), runRequest("slow"))
	if submit.ClassOf(err) != submit.ClassAmbiguous || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want an ambiguous deadline error", err)
	}
	// Shutting the listener down ends the held latency; Shutdown returns
	// once the call was processed.
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := len(s.RunGroups()); n != 1 {
		t.Errorf("%d groups, want 1 created after the client left", n)
	}
	st := s.Stats()
	if st.AnsweredAfterClientGone != 1 || st.FaultsInjected.Latency != 1 {
		t.Errorf("answered after client gone %d, latency faults %d; want 1, 1", st.AnsweredAfterClientGone, st.FaultsInjected.Latency)
	}
}

// TestLatencyDelaysAnswer: a latency shorter than the client timeout only
// delays the answer.
func TestLatencyDelaysAnswer(t *testing.T) {
	t.Parallel()
	const latency = 150 * time.Millisecond
	_, l := startSandbox(t, Options{Faults: Faults{Latency: latency, LatencyP: 1}})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	start := time.Now()
	if _, err := c.RunApplication(t.Context(), runRequest("delayed")); err != nil {
		t.Fatalf("RunApplication: %v", err)
	}
	if took := time.Since(start); took < latency {
		t.Errorf("call took %v, want at least %v", took, latency)
	}
}

// TestShutdownReleasesHang: a hung call does not hold Listener.Shutdown.
func TestShutdownReleasesHang(t *testing.T) {
	t.Parallel()
	logs := &recordHandler{records: make(chan slog.Record, 16)}
	s, err := New(Options{Logger: slog.New(logs), Faults: Faults{CommitThenFailP: 1, CommitThenFailModes: []CommitFailMode{CommitFailHang}}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(t.Context(), "127.0.0.1:0", s)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, l.Addr(), defaultCred(), time.Minute)
	errc := make(chan error, 1)
	go func() {
		_, err := c.RunApplication(context.Background(), runRequest("hung"))
		errc <- err
	}()
	for r := range logs.records {
		if outcomeOf(r) == outcomeCommitPrefix+string(CommitFailHang) {
			break // the handler now holds the call
		}
	}
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v with a hung call", took)
	}
	if err := <-errc; submit.ClassOf(err) != submit.ClassAmbiguous {
		t.Errorf("client err = %v, want ambiguous", err)
	}
}

func TestFaultsValidate(t *testing.T) {
	t.Parallel()
	for name, f := range map[string]Faults{
		"negative":     {InternalErrorP: -0.1},
		"above one":    {ThrottleP: 1.5},
		"NaN":          {CommitThenFailP: math.NaN()},
		"latency P":    {LatencyP: 2},
		"neg latency":  {Latency: -time.Second},
		"unknown mode": {CommitThenFailModes: []CommitFailMode{"explode"}},
	} {
		if err := f.Validate(); err == nil {
			t.Errorf("%s: Validate() = nil", name)
		}
		if _, err := New(Options{Faults: f}); err == nil {
			t.Errorf("%s: New accepted invalid faults", name)
		}
	}
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetFaults(Faults{ThrottleP: 7}); err == nil {
		t.Error("SetFaults accepted ThrottleP 7")
	}
	if _, err := New(Options{Rate: -1}); err == nil {
		t.Error("New accepted Rate -1")
	}
}
