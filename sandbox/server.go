// Package sandbox is a local stand-in for the Tencent Cloud Healthcare Omics
// API (version 2022-11-28): the real wire protocol and TC3-HMAC-SHA256
// signature verification, RunApplication and DescribeRunGroups with the
// API's validation and error codes, DescribeRuns, RetryRuns and
// TerminateRunGroup over an optional execution model of the runs, a
// per-action rate limit, seeded fault injection (including run groups
// created behind a failed answer), optional eventual consistency of the
// list actions, and server-side statistics that tests and benchmarks judge
// a client by. It shares no code or types with the client it tests.
//
// Embed it with New and serve it with Listen (or any http.Server), or run
// cmd/omics-sim. docs/sandbox.md lists every knob, the statistics fields
// and what the sandbox does not model.
package sandbox

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults for a zero-setup sandbox. DefaultSecretID and DefaultSecretKey
// are the credentials the worker's --sandbox mode signs with.
const (
	DefaultSecretID    = "AKIDsandbox"
	DefaultSecretKey   = "sandbox-secret-key"
	DefaultRate        = 20 // calls per second per action, the API's documented limit
	DefaultMaxSkew     = 5 * time.Minute
	DefaultHangTimeout = 2 * time.Minute
)

// APIVersion is the only X-TC-Version the sandbox serves.
const APIVersion = "2022-11-28"

// MaxBodyBytes is the API's request size limit for TC3 POST bodies (10 MB).
const MaxBodyBytes = 10 << 20

// Actions the sandbox models.
const (
	actionRunApplication    = "RunApplication"
	actionDescribeRunGroups = "DescribeRunGroups"
	actionDescribeRuns      = "DescribeRuns"
	actionRetryRuns         = "RetryRuns"
	actionTerminateRunGroup = "TerminateRunGroup"
	// actionOther buckets the statistics of calls naming any other action,
	// so a caller cannot grow the statistics without bound.
	actionOther = "_other"
)

var modelledActions = []string{actionRunApplication, actionDescribeRunGroups, actionDescribeRuns,
	actionRetryRuns, actionTerminateRunGroup}

// committingActions change state, so commit-then-fail faults apply to
// them: the change is made, then the answer fails.
var committingActions = []string{actionRunApplication, actionRetryRuns, actionTerminateRunGroup}

// Outcomes recorded in Stats.Calls besides API error codes.
const (
	outcomeSuccess        = "success"
	outcomeThrottled      = "throttled"       // refused by the rate limiter
	outcomeThrottledFault = "throttled_fault" // spurious RequestLimitExceeded (Faults.ThrottleP)
	outcomeInternalError  = "internal_error"  // Faults.InternalErrorP
	outcomeDuplicateName  = "duplicate_name"
	outcomeBodyReadError  = "body_read_error" // the request body could not be read; nothing answered
	outcomeCommitPrefix   = "commit_then_fail_"
)

// Options configures a Server. The zero value is a usable sandbox without a
// rate limit.
type Options struct {
	// SecretID and SecretKey are the one accepted credential. Both empty
	// means DefaultSecretID and DefaultSecretKey.
	SecretID, SecretKey string
	// Token, when set, must arrive as X-TC-Token (an STS session token);
	// otherwise AuthFailure.TokenFailure. Empty accepts calls with or
	// without a token.
	Token string
	// Rate is the number of calls per action admitted in any sliding
	// 1-second window (DefaultRate is the API's limit); further calls get
	// RequestLimitExceeded and are not admitted. 0 lifts the limit.
	Rate int
	// Faults is the initial fault injection; see SetFaults.
	Faults Faults
	// Visibility is the initial DescribeRunGroups lag and page order; see
	// SetVisibility. The zero value shows every group at once, in creation
	// order.
	Visibility Visibility
	// Execution is the initial execution model of the runs; see
	// SetExecution. The zero value leaves every run Pending.
	Execution Execution
	// Seed seeds fault decisions, run-group IDs, RunUuids, visibility draws
	// and run lifecycles, each from its own stream.
	Seed int64
	// KnownApplications, KnownEnvironments, KnownProjects and KnownTables
	// are the resources that exist. nil accepts any well-formed ID; a
	// non-nil list answers ResourceNotFound.ApplicationNotExist,
	// EnvironmentNotExist, ProjectNotExist or TableNotExist for others.
	// The default project (no ProjectId, or DefaultProjectID) always exists.
	KnownApplications, KnownEnvironments, KnownProjects, KnownTables []string
	// MaxSkew is the largest accepted difference between X-TC-Timestamp
	// and the server clock. Default DefaultMaxSkew (the API's 5 minutes).
	MaxSkew time.Duration
	// HangTimeout bounds how long a CommitFailHang call is held when the
	// client does not give up. Default DefaultHangTimeout.
	HangTimeout time.Duration
	// Now is the server clock. Default time.Now.
	Now func() time.Time
	// Logger receives one debug record per call (action, outcome, request
	// id, duration; never bodies or parameter values). Default: discard.
	Logger *slog.Logger
}

// Server is the sandbox Omics API. It implements http.Handler and is safe
// for concurrent use.
type Server struct {
	now         func() time.Time
	epoch       time.Time // window timestamps are offsets from it (monotonic when Now is time.Now)
	maxSkew     time.Duration
	hangTimeout time.Duration
	known       knownResources
	log         *slog.Logger
	store       *store
	done        chan struct{} // closed by Close: releases held calls
	closeOnce   sync.Once

	mu       sync.Mutex // guards everything below
	cred     credentials
	rate     int
	faults   faultPicker
	forced   string
	actions  map[string]*actionState
	counts   counters
	inflight inflightTracker
	// unavailable lists environments whose RunApplication calls are
	// answered EnvironmentNotAvailable (after validation): an outage.
	unavailable map[string]bool
}

// actionState is the rate limiter and statistics of one action.
type actionState struct {
	arrivals, admitted       slidingWindow
	last                     time.Duration // latest timestamp pushed, to keep windows ordered
	maxArrivals, maxAdmitted int
	totalArrivals            int64
	totalAdmitted            int64
	totalThrottled           int64
	perSecond                secondHistogram
	outcomes                 map[string]int64
}

type counters struct {
	duplicateNames          int64
	forcedErrors            int64
	answeredAfterClientGone int64
	latency                 int64
	internalErrors          int64
	throttles               int64
	commitThenFail          map[CommitFailMode]int64
}

type knownResources struct {
	applications, environments, projects, tables map[string]bool // nil: any
}

func toSet(ids []string) map[string]bool {
	if ids == nil {
		return nil
	}
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set
}

// New returns a Server for opts. It performs no I/O.
func New(opts Options) (*Server, error) {
	if opts.SecretID == "" && opts.SecretKey == "" {
		opts.SecretID, opts.SecretKey = DefaultSecretID, DefaultSecretKey
	}
	if err := checkCredentials(opts.SecretID, opts.SecretKey); err != nil {
		return nil, err
	}
	if opts.Rate < 0 {
		return nil, errors.New("sandbox: Rate must not be negative (0 lifts the limit)")
	}
	if err := opts.Faults.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Visibility.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Execution.Validate(); err != nil {
		return nil, err
	}
	switch {
	case opts.MaxSkew < 0:
		return nil, errors.New("sandbox: MaxSkew must not be negative")
	case opts.MaxSkew == 0:
		opts.MaxSkew = DefaultMaxSkew
	}
	switch {
	case opts.HangTimeout < 0:
		return nil, errors.New("sandbox: HangTimeout must not be negative")
	case opts.HangTimeout == 0:
		opts.HangTimeout = DefaultHangTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		now:         opts.Now,
		epoch:       opts.Now(),
		maxSkew:     opts.MaxSkew,
		hangTimeout: opts.HangTimeout,
		known: knownResources{
			applications: toSet(opts.KnownApplications),
			environments: toSet(opts.KnownEnvironments),
			projects:     toSet(opts.KnownProjects),
			tables:       toSet(opts.KnownTables),
		},
		log:   opts.Logger,
		store: newStore(opts.Seed, opts.Visibility, opts.Execution),
		done:  make(chan struct{}),
		cred:  credentials{secretID: opts.SecretID, secretKey: opts.SecretKey, token: opts.Token},
		rate:  opts.Rate,
		faults: faultPicker{
			faults: opts.Faults.clone(),
			rng:    rand.New(rand.NewPCG(uint64(opts.Seed), 0xfa017)),
		},
		actions:  make(map[string]*actionState),
		counts:   counters{commitThenFail: make(map[CommitFailMode]int64)},
		inflight: inflightTracker{open: make(map[nameKey]int)},
	}
	for _, a := range append(modelledActions, actionOther) {
		s.actions[a] = &actionState{
			arrivals: newSlidingWindow(time.Second),
			admitted: newSlidingWindow(time.Second),
			outcomes: make(map[string]int64),
		}
	}
	return s, nil
}

func checkCredentials(id, key string) error {
	if id == "" || key == "" {
		return errors.New("sandbox: secret id and secret key must both be set")
	}
	// The SDK cannot send these in a header or would sign them differently.
	if strings.ContainsAny(id, "/, \t\r\n") {
		return errors.New("sandbox: secret id must not contain '/', ',' or whitespace")
	}
	return nil
}

// SetCredentials replaces the accepted credential (a key rotation): calls
// signed with the old secret id then get AuthFailure.SecretIdNotFound, and
// calls signed with the old key under the same id AuthFailure.SignatureFailure.
func (s *Server) SetCredentials(secretID, secretKey string) error {
	if err := checkCredentials(secretID, secretKey); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cred.secretID, s.cred.secretKey = secretID, secretKey
	return nil
}

// SetFaults replaces the fault injection for calls admitted from now on.
// The random source continues; it is not reseeded.
func (s *Server) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.faults = f.clone()
	s.faults.next = 0
	return nil
}

// Faults returns the current fault injection.
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.faults.clone()
}

// ForceError makes every authenticated call answer code (for example
// "AuthFailure.UnauthorizedOperation" or "LimitExceeded") before the rate
// limiter, until ForceError(""). Forced calls are neither admitted nor
// throttled; they are counted under their code.
func (s *Server) ForceError(code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forced = code
}

// SetEnvironmentAvailable makes RunApplication calls for environment id
// answer InvalidParameterValue.EnvironmentNotAvailable (after validation,
// so a parameter error still comes first), or stop doing so: an outage of
// one delivery environment. Other actions are not affected.
func (s *Server) SetEnvironmentAvailable(id string, available bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unavailable == nil {
		s.unavailable = make(map[string]bool)
	}
	if available {
		delete(s.unavailable, id)
	} else {
		s.unavailable[id] = true
	}
}

// SetRunGroupStatus sets the Status (and UpdateTime) of a created run
// group and of all its runs, for tests of clients that watch statuses. The
// status then stays until the next SetRunGroupStatus, whatever the
// execution model says; TerminateRunGroup on a group set to a status that
// is not terminal clears it. It returns false if no such group exists.
func (s *Server) SetRunGroupStatus(runGroupID, status string) bool {
	return s.store.setStatus(runGroupID, status, s.now())
}

// RunGroups returns every created run group in creation order, with its
// status at the server clock's now. The returned Option and NFOption
// values are shared with the server: do not modify them.
func (s *Server) RunGroups() []RunGroup { return s.store.all(s.now()) }

// Runs returns the runs of a run group as DescribeRuns reports them now,
// in row order, or nil if no such group exists.
func (s *Server) Runs(runGroupID string) []Run { return s.store.runsOf(runGroupID, s.now()) }

// Retries returns, for every run group RetryRuns was applied to, the
// RunGroupIds it created from it in creation order, including those behind
// a commit-then-fail answer. A client that retries each failed group
// exactly once leaves one ID per key.
func (s *Server) Retries() map[string][]string { return s.store.retriesCopy() }

// Close releases calls held by latency and hang faults (they then proceed,
// or drop their connection) and makes later ones return at once. The
// server keeps answering other calls. Close is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.done) })
}

// ServeHTTP serves the API on POST (any path; the SDK signs "/" whatever
// its endpoint path) and the sandbox's own endpoints under /sandbox/.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/sandbox/") {
		s.serveControl(w, r)
		return
	}
	s.serveAPI(w, r)
}

// call is one API call on its way through the handler.
type call struct {
	s         *Server
	w         http.ResponseWriter
	r         *http.Request
	action    string // statistics key: a modelled action or actionOther
	requestID string
	start     time.Time
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	c := &call{s: s, w: w, r: r, action: actionOther, requestID: newRequestID(), start: time.Now()}
	if a := r.Header.Get("X-TC-Action"); isModelled(a) {
		c.action = a
	}
	st := s.actions[c.action]
	s.mu.Lock()
	s.arrive(st)
	s.mu.Unlock()

	if r.Method != http.MethodPost {
		c.fail(errorf(codeUnsupportedProtocol, "the sandbox serves POST requests only"))
		return
	}
	body, apiErr := readBody(w, r)
	if apiErr != nil {
		c.fail(apiErr)
		return
	}
	if body == nil {
		c.finish(outcomeBodyReadError)
		return
	}
	if apiErr := checkCommonParameters(r); apiErr != nil {
		c.fail(apiErr)
		return
	}
	region := r.Header.Get("X-TC-Region")

	s.mu.Lock()
	cred, forced := s.cred, s.forced
	s.mu.Unlock()
	if apiErr := verifySignature(r, body, cred, s.now(), s.maxSkew); apiErr != nil {
		c.fail(apiErr)
		return
	}
	if forced != "" {
		s.mu.Lock()
		s.counts.forcedErrors++
		s.mu.Unlock()
		c.fail(errorf(forced, "the sandbox is forced to answer this error"))
		return
	}

	s.mu.Lock()
	admitted := s.admit(st)
	var fd faultDecision
	if admitted {
		fd = s.faults.decide(c.action)
		s.countFaults(fd)
	}
	s.mu.Unlock()
	if !admitted {
		c.failAs(outcomeThrottled, errorf(codeRequestLimitExceeded, "the request rate of %s exceeds the limit", c.action))
		return
	}
	// Open from admission, before faults hold the call: a latency or hang
	// is exactly when a client is tempted to send the call again.
	if c.action == actionRunApplication {
		if end := s.trackRunApplication(r.Context(), body, region); end != nil {
			defer end()
		}
	}

	if fd.latency > 0 {
		s.delay(r.Context(), fd.latency)
	}
	switch {
	case fd.internalError:
		c.failAs(outcomeInternalError, errorf(codeInternalError, "an internal error occurred (injected by the sandbox)"))
		return
	case fd.throttle:
		c.failAs(outcomeThrottledFault, errorf(codeRequestLimitExceeded, "the request rate exceeds the limit (injected by the sandbox)"))
		return
	}

	s.dispatch(c, body, region, fd.commitFail)
}

// dispatch runs the action of an admitted call that no fault answered.
func (s *Server) dispatch(c *call, body []byte, region string, commitFail CommitFailMode) {
	switch c.action {
	case actionRunApplication:
		s.runApplication(c, body, region, commitFail)
	case actionDescribeRunGroups:
		s.describeRunGroups(c, body, region)
	case actionDescribeRuns:
		s.describeRuns(c, body, region)
	case actionRetryRuns:
		s.retryRuns(c, body, region, commitFail)
	case actionTerminateRunGroup:
		s.terminateRunGroup(c, body, region, commitFail)
	}
}

func isModelled(action string) bool { return slices.Contains(modelledActions, action) }

// readBody reads the whole body within MaxBodyBytes. It returns a nil body
// and nil error when the body could not be read (the client went away).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	tooBig := errorf(codeRequestSizeLimitExceeded, "the request body exceeds %d bytes", MaxBodyBytes)
	if r.ContentLength > MaxBodyBytes {
		return nil, tooBig
	}
	rd := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		// One allocation of the announced size instead of ReadAll's growth.
		// net/http ends the body at Content-Length.
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(rd, body)
	} else {
		body, err = io.ReadAll(rd)
	}
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooBig
		}
		return nil, nil
	}
	return body, nil
}

// checkCommonParameters checks the X-TC-* headers other than the signature.
func checkCommonParameters(r *http.Request) *apiError {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errorf(codeUnsupportedProtocol, "the Content-Type must be application/json")
	}
	action, version := r.Header.Get("X-TC-Action"), r.Header.Get("X-TC-Version")
	switch {
	case action == "":
		return errorf(codeMissingParameter, "the X-TC-Action header is required")
	case version == "":
		return errorf(codeMissingParameter, "the X-TC-Version header is required")
	case version != APIVersion:
		return errorf(codeNoSuchVersion, "the version does not exist; omics serves %s", APIVersion)
	case !isModelled(action):
		return errorf(codeInvalidAction, "the action does not exist or is not modelled by the sandbox")
	}
	region := r.Header.Get("X-TC-Region")
	if region == "" {
		return errorf(codeMissingParameter, "the X-TC-Region header is required")
	}
	if len(region) > 64 || strings.ContainsFunc(region, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
	}) {
		return errorf(codeUnsupportedRegion, "the region is not supported")
	}
	return nil
}

// arrive records an arrival of a call of st's action. s.mu must be held.
func (s *Server) arrive(st *actionState) {
	now := s.now()
	t := st.clamp(now.Sub(s.epoch))
	st.totalArrivals++
	st.maxArrivals = max(st.maxArrivals, st.arrivals.push(t))
	st.perSecond.at(now.Unix()).Arrivals++
}

// admit applies the rate limiter to a call of st's action and records the
// decision. s.mu must be held.
func (s *Server) admit(st *actionState) bool {
	now := s.now()
	t := st.clamp(now.Sub(s.epoch))
	sec := st.perSecond.at(now.Unix())
	if s.rate > 0 && st.admitted.countAt(t) >= s.rate {
		st.totalThrottled++
		sec.Throttled++
		return false
	}
	st.totalAdmitted++
	st.maxAdmitted = max(st.maxAdmitted, st.admitted.push(t))
	sec.Admitted++
	return true
}

// clamp keeps an action's timestamps non-decreasing when an injected clock
// steps back (or two calls race between reading the clock and the lock).
func (st *actionState) clamp(t time.Duration) time.Duration {
	if t < st.last {
		return st.last
	}
	st.last = t
	return t
}

func (s *Server) countFaults(fd faultDecision) {
	if fd.latency > 0 {
		s.counts.latency++
	}
	// A commit-then-fail is counted when it happens: only a call that
	// creates its run group fails that way.
	switch {
	case fd.internalError:
		s.counts.internalErrors++
	case fd.throttle:
		s.counts.throttles++
	}
}

// listenerDoneKey carries the Done channel of a Listener's base context, so
// held calls end when that listener shuts down.
type listenerDoneKey struct{}

// delay waits d before the call is processed. The client giving up does not
// cut it short (a real backend carries on); closing the server or its
// listener does.
func (s *Server) delay(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	case <-listenerDone(ctx):
	}
}

func listenerDone(ctx context.Context) <-chan struct{} {
	done, _ := ctx.Value(listenerDoneKey{}).(<-chan struct{})
	return done // nil blocks forever in a select
}

// fail answers e; its code is the outcome.
func (c *call) fail(e *apiError) { c.failAs(e.Code, e) }

// failAs answers e and records outcome.
func (c *call) failAs(outcome string, e *apiError) {
	c.respond(outcome, struct {
		Error     *apiError `json:"Error"`
		RequestId string    `json:"RequestId"`
	}{e, c.requestID})
}

// respond writes {"Response": resp} with HTTP 200 and records outcome.
func (c *call) respond(outcome string, resp any) {
	b, err := json.Marshal(struct {
		Response any `json:"Response"`
	}{resp})
	if err != nil {
		// Only a bug can get here: the response types always encode.
		panic(fmt.Sprintf("sandbox: encode response: %v", err))
	}
	h := c.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-TC-RequestId", c.requestID)
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(b) // a client that left is its own problem
	c.finish(outcome)
}

// finish records the outcome of the call and logs it.
func (c *call) finish(outcome string) {
	gone := c.r.Context().Err() != nil
	c.s.mu.Lock()
	c.s.actions[c.action].outcomes[outcome]++
	if gone {
		c.s.counts.answeredAfterClientGone++
	}
	c.s.mu.Unlock()
	c.s.log.LogAttrs(c.r.Context(), slog.LevelDebug, "omics call",
		slog.String("action", c.action),
		slog.String("outcome", outcome),
		slog.String("request_id", c.requestID),
		slog.Duration("duration", time.Since(c.start)))
}

// newRequestID returns a random (version 4) UUID.
func newRequestID() string {
	var u [16]byte
	_, _ = crand.Read(u[:]) // never fails (crypto/rand documents it)
	return formatUUID(u)
}

// randomUUID returns a version 4 UUID drawn from rng, so RunUuids are
// reproducible per seed.
func randomUUID(rng *rand.Rand) string {
	var u [16]byte
	binary.LittleEndian.PutUint64(u[:8], rng.Uint64())
	binary.LittleEndian.PutUint64(u[8:], rng.Uint64())
	return formatUUID(u)
}

func formatUUID(u [16]byte) string {
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
