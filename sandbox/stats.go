package sandbox

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Stats is the sandbox's server-side record of what clients did. Every
// field is documented in docs/sandbox.md; GET /sandbox/stats serves it as
// JSON.
type Stats struct {
	// Now is the server clock when the statistics were taken.
	Now time.Time `json:"now"`
	// Rate is the per-action limit in calls per sliding second; 0 means
	// unlimited.
	Rate int `json:"rate"`
	// Faults is the current fault injection.
	Faults Faults `json:"faults"`
	// Visibility is the current DescribeRunGroups lag and page order.
	Visibility Visibility `json:"visibility"`
	// Execution is the current execution model.
	Execution Execution `json:"execution"`
	// ForcedError is the code ForceError set, or empty.
	ForcedError string `json:"forced_error"`
	// Actions holds per-action statistics, keyed by action name;
	// "_other" collects calls naming any action the sandbox does not model.
	Actions map[string]ActionStats `json:"actions"`
	// RunGroupsCreated counts run groups created, by RunApplication and
	// RetryRuns, including those whose caller got a commit-then-fail answer.
	RunGroupsCreated int `json:"run_groups_created"`
	// RetryGroupsCreated counts the run groups RetryRuns created (included
	// in RunGroupsCreated), RetriedGroups the distinct groups they were
	// retried from, and MaxRetryGroupsPerGroup the most groups created
	// from one of them. A client that retries each failed group once keeps
	// MaxRetryGroupsPerGroup at most 1; Server.Retries has the detail.
	RetryGroupsCreated     int `json:"retry_groups_created"`
	RetriedGroups          int `json:"retried_groups"`
	MaxRetryGroupsPerGroup int `json:"max_retry_groups_per_group"`
	// DuplicateNameRejections counts RunApplication calls answered
	// InvalidParameterValue.DuplicateName.
	DuplicateNameRejections int64 `json:"duplicate_name_rejections"`
	// ForcedErrors counts calls answered with the ForceError code.
	ForcedErrors int64 `json:"forced_errors"`
	// FaultsInjected counts injected faults by kind.
	FaultsInjected FaultCounts `json:"faults_injected"`
	// AnsweredAfterClientGone counts calls whose client had disconnected
	// before the answer was written (typically after an injected latency).
	AnsweredAfterClientGone int64 `json:"answered_after_client_gone"`
	// MaxConcurrentRunApplicationPerName is the most RunApplication calls
	// ever open at once for one (region, project, Name). A call is open
	// from its admission until it is answered or its client gives up,
	// whichever comes first; a call the server still holds after its
	// client left (a latency fault) does not count. A client with
	// exactly-once submission keeps this at most 1.
	MaxConcurrentRunApplicationPerName int `json:"max_concurrent_run_application_per_name"`
	// ConcurrentRunApplicationOverlaps counts RunApplication calls that
	// arrived while another call for the same (region, project, Name) was
	// open.
	ConcurrentRunApplicationOverlaps int64 `json:"concurrent_run_application_overlaps"`
	// OverlappingNames are the first 20 distinct Names that overlapped, for
	// debugging. Names are request values: like RunGroups, keep them out of
	// logs that may leave the test.
	OverlappingNames []string `json:"overlapping_names"`
	// RunGroups lists the created run groups in creation order. Stats()
	// leaves it empty (use RunGroups()); GET /sandbox/stats?run_groups=1
	// fills it.
	RunGroups []RunGroupRef `json:"run_groups,omitempty"`
}

// ActionStats are the statistics of one action.
type ActionStats struct {
	// Calls counts calls by outcome: "success", "throttled" (rate limiter),
	// "throttled_fault", "internal_error", "duplicate_name",
	// "commit_then_fail_<mode>", "body_read_error", or the error code
	// answered (validation, authentication, protocol and forced codes).
	Calls map[string]int64 `json:"calls"`
	// Arrivals counts every call of the action, whatever its outcome.
	Arrivals int64 `json:"arrivals"`
	// Admitted counts calls the rate limiter let through.
	Admitted int64 `json:"admitted"`
	// Throttled counts calls the rate limiter refused.
	Throttled int64 `json:"throttled"`
	// MaxArrivals1s is the most arrivals seen in any sliding 1-second
	// window (half-open, (t-1s, t]).
	MaxArrivals1s int `json:"max_arrivals_1s"`
	// MaxAdmitted1s is the most admitted calls seen in any sliding 1-second
	// window; with a rate limit it never exceeds Rate.
	MaxAdmitted1s int `json:"max_admitted_1s"`
	// PerSecond is the per-second histogram, oldest first (at most the
	// last 24 hours).
	PerSecond []SecondStats `json:"per_second"`
}

// FaultCounts counts injected faults.
type FaultCounts struct {
	Latency        int64                    `json:"latency"`
	InternalError  int64                    `json:"internal_error"`
	Throttle       int64                    `json:"throttle"`
	CommitThenFail map[CommitFailMode]int64 `json:"commit_then_fail"`
}

// Stats returns a snapshot of the statistics, without the run-group list.
func (s *Server) Stats() Stats {
	created, vis, exec := s.store.count(), s.store.visibility(), s.store.execution()
	retried, sources, maxPerSource := s.store.retryStats()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Now:                     s.now(),
		Rate:                    s.rate,
		Faults:                  s.faults.faults.clone(),
		Visibility:              vis,
		Execution:               exec,
		ForcedError:             s.forced,
		Actions:                 make(map[string]ActionStats, len(s.actions)),
		RunGroupsCreated:        created,
		RetryGroupsCreated:      retried,
		RetriedGroups:           sources,
		MaxRetryGroupsPerGroup:  maxPerSource,
		DuplicateNameRejections: s.counts.duplicateNames,
		ForcedErrors:            s.counts.forcedErrors,
		AnsweredAfterClientGone: s.counts.answeredAfterClientGone,
		FaultsInjected: FaultCounts{
			Latency:        s.counts.latency,
			InternalError:  s.counts.internalErrors,
			Throttle:       s.counts.throttles,
			CommitThenFail: maps.Clone(s.counts.commitThenFail),
		},
		MaxConcurrentRunApplicationPerName: s.inflight.maxPerName,
		ConcurrentRunApplicationOverlaps:   s.inflight.overlaps,
		OverlappingNames:                   append([]string{}, s.inflight.names...),
	}
	for name, a := range s.actions {
		st.Actions[name] = ActionStats{
			Calls:         maps.Clone(a.outcomes),
			Arrivals:      a.totalArrivals,
			Admitted:      a.totalAdmitted,
			Throttled:     a.totalThrottled,
			MaxArrivals1s: a.maxArrivals,
			MaxAdmitted1s: a.maxAdmitted,
			PerSecond:     append([]SecondStats{}, a.perSecond.buckets...),
		}
	}
	return st
}

// serveControl serves the sandbox's own endpoints. They are not signed:
// the sandbox binds to loopback by default and holds no real data.
//
//	GET  /sandbox/stats[?run_groups=1]  Stats as JSON
//	GET  /sandbox/run-groups            every created RunGroup, creation order
//	GET  /sandbox/faults                the current Faults
//	PUT  /sandbox/faults                replace the Faults (JSON body)
//	GET  /sandbox/visibility            the current Visibility
//	PUT  /sandbox/visibility            replace the Visibility (JSON body)
//	GET  /sandbox/execution             the current Execution
//	PUT  /sandbox/execution             replace the Execution (JSON body)
//	GET  /sandbox/retries               Server.Retries as JSON
//	GET  /sandbox/force-error           {"code": "..."}
//	PUT  /sandbox/force-error           {"code": "..."}; "" stops forcing
func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/sandbox/")
	switch {
	case path == "stats" && r.Method == http.MethodGet:
		st := s.Stats()
		if r.URL.Query().Get("run_groups") == "1" {
			st.RunGroups = s.store.refs()
		}
		writeControlJSON(w, http.StatusOK, st)
	case path == "run-groups" && r.Method == http.MethodGet:
		writeControlJSON(w, http.StatusOK, s.RunGroups())
	case path == "faults" && r.Method == http.MethodGet:
		writeControlJSON(w, http.StatusOK, s.Faults())
	case path == "faults" && r.Method == http.MethodPut:
		var f Faults
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&f); err != nil {
			writeControlError(w, http.StatusBadRequest, "faults: "+err.Error())
			return
		}
		if err := s.SetFaults(f); err != nil {
			writeControlError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeControlJSON(w, http.StatusOK, s.Faults())
	case path == "visibility" && r.Method == http.MethodGet:
		writeControlJSON(w, http.StatusOK, s.Visibility())
	case path == "visibility" && r.Method == http.MethodPut:
		var v Visibility
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&v); err != nil {
			writeControlError(w, http.StatusBadRequest, "visibility: "+err.Error())
			return
		}
		if err := s.SetVisibility(v); err != nil {
			writeControlError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeControlJSON(w, http.StatusOK, s.Visibility())
	case path == "execution" && r.Method == http.MethodGet:
		writeControlJSON(w, http.StatusOK, s.Execution())
	case path == "execution" && r.Method == http.MethodPut:
		var e Execution
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&e); err != nil {
			writeControlError(w, http.StatusBadRequest, "execution: "+err.Error())
			return
		}
		if err := s.SetExecution(e); err != nil {
			writeControlError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeControlJSON(w, http.StatusOK, s.Execution())
	case path == "retries" && r.Method == http.MethodGet:
		writeControlJSON(w, http.StatusOK, s.Retries())
	case path == "force-error" && (r.Method == http.MethodGet || r.Method == http.MethodPut):
		if r.Method == http.MethodPut {
			var body struct {
				Code string `json:"code"`
			}
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				writeControlError(w, http.StatusBadRequest, `force-error: want {"code": "<error code>"}`)
				return
			}
			s.ForceError(body.Code)
		}
		s.mu.Lock()
		code := s.forced
		s.mu.Unlock()
		writeControlJSON(w, http.StatusOK, map[string]string{"code": code})
	case slices.Contains(controlPaths, path):
		writeControlError(w, http.StatusMethodNotAllowed, "method not allowed")
	default:
		writeControlError(w, http.StatusNotFound, "no such sandbox endpoint")
	}
}

// controlPaths are the endpoints serveControl knows, for 405 versus 404.
var controlPaths = []string{"stats", "run-groups", "faults", "visibility", "execution", "retries", "force-error"}

func writeControlJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeControlError(w, http.StatusInternalServerError, "encode: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeControlError(w http.ResponseWriter, status int, msg string) {
	writeControlJSON(w, status, map[string]string{"error": msg})
}
