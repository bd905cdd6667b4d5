package sandbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultProjectID is the ID of each region's default project: the project
// of a call without ProjectId. Naming it explicitly selects the same
// project.
const DefaultProjectID = "prj-sandbox-default"

// RunGroup is a run group in the sandbox's registry: what DescribeRunGroups
// reports, plus where it lives and where it came from.
type RunGroup struct {
	// Region is the X-TC-Region of the call that created the group; each
	// region has its own projects, as on Tencent Cloud.
	Region string `json:"Region"`
	// RetriedFrom is the RunGroupId that RetryRuns re-executed to create
	// this group; empty for a group RunApplication created.
	RetriedFrom string `json:"RetriedFrom,omitempty"`
	DescribedRunGroup
}

// RunGroupRef identifies a created run group in Stats.
type RunGroupRef struct {
	RunGroupID string `json:"run_group_id"`
	Name       string `json:"name"`
	ProjectID  string `json:"project_id"`
	Region     string `json:"region"`
}

// Times are reported in China Standard Time, like the API's examples.
var chinaStandardTime = time.FixedZone("CST", 8*60*60)

type projectKey struct{ region, project string }

type nameKey struct {
	projectKey
	name string
}

// storedRun is one run of a group. Its status is not stored: it follows
// from the plan, the termination and the clock (storedGroup.stateOf).
type storedRun struct {
	uuid         string
	tableRowUUID string
	plan         *runPlan  // nil: no execution model, the run stays Pending
	terminatedAt time.Time // set by TerminateRunGroup if the run had not ended
}

type storedGroup struct {
	seq    int // creation order
	region string
	// info holds the fields fixed at creation; Status, RunStatusCounts,
	// ExecutionTime, ErrorMessage and UpdateTime are derived on read.
	info            DescribedRunGroup
	created         time.Time
	cacheClearDelay uint64
	runs            []*storedRun
	foldedName      string // lowercase Name, for the fuzzy Name filter
	// visibleFrom is when DescribeRunGroups starts to see the group
	// (Visibility.Lag); the zero time means at once.
	visibleFrom time.Time
	// override is the status SetRunGroupStatus set (for every run), and
	// overrideAt when; "" lets the runs decide.
	override   string
	overrideAt time.Time
	// retriedFrom and generation record RetryRuns lineage: generation is
	// 0 for a RunApplication group and one more than its source's for a
	// retry.
	retriedFrom string
	generation  int
}

// store holds the run groups: its own lock, so listing never blocks the
// rate limiter. Server.mu is never taken while holding mu.
type store struct {
	mu        sync.RWMutex
	rng       *rand.Rand // run-group IDs, reproducible per seed
	runRng    *rand.Rand // RunUuids
	execRng   *rand.Rand // run lifecycles
	exec      Execution
	groups    []*storedGroup
	byID      map[string]*storedGroup
	byName    map[nameKey]*storedGroup
	byProject map[projectKey][]*storedGroup
	retries   map[string][]string // source RunGroupId → groups RetryRuns created from it

	// visMu guards vis and visRng. DescribeRunGroups reads them without
	// holding mu exclusively; create takes visMu while holding mu, never
	// the other way round.
	visMu  sync.Mutex
	vis    Visibility
	visRng *rand.Rand // lags and page orders
}

func newStore(seed int64, vis Visibility, exec Execution) *store {
	// Each random stream is distinct from the others and from the fault
	// picker's, so enabling one feature does not change another's draws.
	return &store{
		rng:       rand.New(rand.NewPCG(uint64(seed), 0x5eed1d)),
		runRng:    rand.New(rand.NewPCG(uint64(seed), 0x7a1d)),
		execRng:   rand.New(rand.NewPCG(uint64(seed), 0xe0ec)),
		exec:      exec.clone(),
		byID:      make(map[string]*storedGroup),
		byName:    make(map[nameKey]*storedGroup),
		byProject: make(map[projectKey][]*storedGroup),
		retries:   make(map[string][]string),
		vis:       vis,
		visRng:    rand.New(rand.NewPCG(uint64(seed), 0x1a6)),
	}
}

// create stores a run group for a validated request and returns its ID,
// or reports that the name is taken in the project.
func (st *store) create(region, project string, req *runApplicationRequest, now time.Time) (string, bool) {
	pk := projectKey{region, project}
	nk := nameKey{pk, req.Name}
	sg := newGroup(region, project, req, now)

	st.mu.Lock()
	defer st.mu.Unlock()
	if _, taken := st.byName[nk]; taken {
		return "", true
	}
	rows := req.TableRowUuids
	if len(rows) == 0 {
		// A singleton, or a batch of "all rows": the sandbox has no table
		// contents, so either is one run.
		rows = []string{""}
	}
	st.insert(sg, rows, now)
	st.byName[nk] = sg
	return sg.info.RunGroupId, false
}

// insert gives sg an ID and one run per row, and registers it. st.mu must
// be held.
func (st *store) insert(sg *storedGroup, rows []string, now time.Time) {
	for {
		sg.info.RunGroupId = runGroupID(st.rng)
		if _, taken := st.byID[sg.info.RunGroupId]; !taken {
			break
		}
	}
	sg.runs = make([]*storedRun, len(rows))
	for i, row := range rows {
		sg.runs[i] = &storedRun{uuid: randomUUID(st.runRng), tableRowUUID: row, plan: st.exec.plan(st.execRng, now)}
	}
	sg.info.TotalRun = uint64(len(rows))
	sg.seq = len(st.groups)
	sg.visibleFrom = st.visibleFrom(now)
	pk := projectKey{sg.region, sg.info.ProjectId}
	st.groups = append(st.groups, sg)
	st.byID[sg.info.RunGroupId] = sg
	st.byProject[pk] = append(st.byProject[pk], sg)
}

func newGroup(region, project string, req *runApplicationRequest, now time.Time) *storedGroup {
	ts := apiTime(now)
	g := DescribedRunGroup{
		ProjectId:     project,
		ApplicationId: req.ApplicationId,
		AccessMode:    deref(req.AccessMode, defaultAccessMode),
		EnvironmentId: req.EnvironmentId,
		TableId:       deref(req.TableId, ""),
		Name:          req.Name,
		Description:   deref(req.Description, ""),
		Type:          "WDL",
		WorkDir:       deref(req.WorkDir, ""),
		Option:        req.Option.toWire(),
		NFOption:      req.NFOption.toWire(),
		CreateTime:    ts,
	}
	if req.NFOption != nil {
		g.Type = "NEXTFLOW"
	}
	if req.InputCosUri != nil {
		g.InputType, g.InputCosUri = "COS", *req.InputCosUri
	} else {
		g.InputType, g.Input = "JSON", string(req.input)
	}
	sg := &storedGroup{region: region, info: g, created: now, foldedName: strings.ToLower(g.Name)}
	if req.CacheClearDelay != nil {
		sg.cacheClearDelay = *req.CacheClearDelay
	}
	return sg
}

// toWire copies the options into the shape the list actions report.
func (o *runOption) toWire() *RunOption {
	if o == nil {
		return nil
	}
	return &RunOption{
		FailureMode:             o.FailureMode,
		UseCallCache:            o.UseCallCache,
		UseErrorOnHold:          o.UseErrorOnHold,
		FinalWorkflowOutputsDir: o.FinalWorkflowOutputsDir,
		UseRelativeOutputPaths:  o.UseRelativeOutputPaths,
		AddRunInfoToOutputDir:   o.AddRunInfoToOutputDir,
	}
}

func (o *nfOption) toWire() *NFOption {
	if o == nil {
		return nil
	}
	return &NFOption{
		Config:    o.Config,
		Profile:   o.Profile,
		Report:    o.Report,
		Resume:    o.Resume,
		NFVersion: o.NFVersion,
		LaunchDir: o.LaunchDir,
	}
}

func deref(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// Words for run-group IDs shaped like the API's
// (run-ashamed-turquoise-rooster-131773).
var (
	idAdjectives = []string{"ashamed", "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
		"merry", "nice", "peaceful", "proud", "quick", "rapid", "shy", "silly", "sweet", "tender", "witty", "zealous"}
	idColours = []string{"amber", "azure", "beige", "black", "blue", "cerulean", "coral", "crimson", "cyan", "gold",
		"green", "indigo", "ivory", "lime", "magenta", "olive", "orange", "pink", "purple", "silver", "teal", "turquoise"}
	idAnimals = []string{"badger", "bird", "cat", "deer", "eagle", "ferret", "frog", "gerbil", "heron", "koala",
		"lemur", "lynx", "otter", "panda", "rabbit", "rooster", "seal", "tiger", "walrus", "wolf", "yak", "zebra"}
)

func runGroupID(rng *rand.Rand) string {
	return fmt.Sprintf("run-%s-%s-%s-%06d",
		idAdjectives[rng.IntN(len(idAdjectives))], idColours[rng.IntN(len(idColours))],
		idAnimals[rng.IntN(len(idAnimals))], rng.IntN(1_000_000))
}

// snapshot is the group as the API reports it at now.
func (sg *storedGroup) snapshot(now time.Time) DescribedRunGroup {
	sum := sg.summary(now)
	g := sg.info
	g.Status = sum.status
	g.RunStatusCounts = sum.counts
	g.ExecutionTime = &ExecutionTime{SubmitTime: g.CreateTime, StartTime: apiTime(sum.start), EndTime: apiTime(sum.end)}
	g.UpdateTime = apiTime(sum.updated)
	if strings.EqualFold(sum.status, StatusFailed) {
		g.ErrorMessage = sum.message
	}
	return g
}

// runSnapshot is run r of sg as DescribeRuns reports it at now.
func (sg *storedGroup) runSnapshot(r *storedRun, now time.Time) Run {
	st := sg.stateOf(r, now)
	cache := &RunCache{CacheClearDelay: sg.cacheClearDelay}
	if sg.cacheClearDelay > 0 && !st.end.IsZero() {
		clear := st.end.Add(time.Duration(sg.cacheClearDelay) * time.Hour)
		cache.CacheClearTime, cache.CacheCleared = apiTime(clear), !now.Before(clear)
	}
	return Run{
		RunUuid:       r.uuid,
		ProjectId:     sg.info.ProjectId,
		ApplicationId: sg.info.ApplicationId,
		RunGroupId:    sg.info.RunGroupId,
		EnvironmentId: sg.info.EnvironmentId,
		TableId:       sg.info.TableId,
		TableRowUuid:  r.tableRowUUID,
		Status:        st.status,
		Input:         sg.info.Input,
		Option:        sg.info.Option,
		ExecutionTime: &ExecutionTime{SubmitTime: sg.info.CreateTime, StartTime: apiTime(st.start), EndTime: apiTime(st.end)},
		Cache:         cache,
		ErrorMessage:  st.message,
		CreateTime:    sg.info.CreateTime,
		UpdateTime:    apiTime(st.updated),
	}
}

// filterClause is one filter of a list action; a clause matches when any
// of its values does, and a list of clauses when all do (AND).
type filterClause struct {
	field  string   // a filter name of the action
	values []string // lowercase for Name
}

type runGroupFilter []filterClause

func (f runGroupFilter) matches(sg *storedGroup, now time.Time) bool {
	for _, c := range f {
		if !c.matchesGroup(sg, now) {
			return false
		}
	}
	return true
}

func (c filterClause) matchesGroup(sg *storedGroup, now time.Time) bool {
	g := &sg.info
	switch c.field {
	case "Name":
		// Case-insensitive substring: the API's exact-or-fuzzy rule is
		// undocumented, so the sandbox answers with the superset and
		// clients must compare names themselves.
		return slices.ContainsFunc(c.values, func(v string) bool { return strings.Contains(sg.foldedName, v) })
	case "RunGroupId":
		return slices.Contains(c.values, g.RunGroupId)
	case "Status":
		return slices.Contains(c.values, sg.summary(now).status)
	case "ApplicationId":
		return slices.Contains(c.values, g.ApplicationId)
	case "Type":
		return slices.Contains(c.values, g.Type)
	}
	return false
}

// describe returns the total number of groups of the project matching f
// and visible at now, and the page [offset, offset+limit) of them: in
// creation order, or in a fresh random order with Visibility.ReorderPages.
func (st *store) describe(pk projectKey, f runGroupFilter, offset, limit uint64, now time.Time) (uint64, []DescribedRunGroup) {
	var shuffle *rand.Rand
	st.visMu.Lock()
	if st.vis.ReorderPages {
		// A private source per call, so the shuffle runs under the read
		// lock without serialising concurrent calls on visMu.
		shuffle = rand.New(rand.NewPCG(st.visRng.Uint64(), st.visRng.Uint64()))
	}
	st.visMu.Unlock()

	st.mu.RLock()
	defer st.mu.RUnlock()
	page := make([]DescribedRunGroup, 0, min(limit, maxDescribeLimit))
	if shuffle != nil {
		var matched []*storedGroup
		for _, sg := range st.byProject[pk] {
			if sg.visibleAt(now) && f.matches(sg, now) {
				matched = append(matched, sg)
			}
		}
		shuffle.Shuffle(len(matched), func(i, j int) { matched[i], matched[j] = matched[j], matched[i] })
		total := uint64(len(matched))
		for i := offset; i < total && uint64(len(page)) < limit; i++ {
			page = append(page, matched[i].snapshot(now))
		}
		return total, page
	}
	var total uint64
	for _, sg := range st.byProject[pk] {
		if !sg.visibleAt(now) || !f.matches(sg, now) {
			continue
		}
		if total >= offset && uint64(len(page)) < limit {
			page = append(page, sg.snapshot(now))
		}
		total++
	}
	return total, page
}

// setStatus overrides the status of every run of a group, for tests of
// clients that watch statuses.
func (st *store) setStatus(id, status string, now time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	sg, ok := st.byID[id]
	if !ok {
		return false
	}
	sg.override, sg.overrideAt = status, now
	return true
}

func (st *store) all(now time.Time) []RunGroup {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]RunGroup, len(st.groups))
	for i, sg := range st.groups {
		out[i] = RunGroup{Region: sg.region, RetriedFrom: sg.retriedFrom, DescribedRunGroup: sg.snapshot(now)}
	}
	return out
}

// runsOf returns the runs of group id at now, or nil if there is none.
func (st *store) runsOf(id string, now time.Time) []Run {
	st.mu.RLock()
	defer st.mu.RUnlock()
	sg, ok := st.byID[id]
	if !ok {
		return nil
	}
	out := make([]Run, len(sg.runs))
	for i, r := range sg.runs {
		out[i] = sg.runSnapshot(r, now)
	}
	return out
}

func (st *store) refs() []RunGroupRef {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]RunGroupRef, len(st.groups))
	for i, sg := range st.groups {
		out[i] = RunGroupRef{RunGroupID: sg.info.RunGroupId, Name: sg.info.Name, ProjectID: sg.info.ProjectId, Region: sg.region}
	}
	return out
}

func (st *store) count() int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return len(st.groups)
}

func (st *store) setExecution(e Execution) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.exec = e
}

func (st *store) execution() Execution {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.exec.clone()
}
