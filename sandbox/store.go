package sandbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

// DefaultProjectID is the ID of each region's default project: the project
// of a RunApplication or DescribeRunGroups call without ProjectId. Naming it
// explicitly selects the same project.
const DefaultProjectID = "prj-sandbox-default"

// RunGroup is a run group the sandbox created: what DescribeRunGroups
// reports, plus the region it lives in.
type RunGroup struct {
	// Region is the X-TC-Region of the call that created the group; each
	// region has its own projects, as on Tencent Cloud.
	Region string `json:"Region"`
	submit.RunGroup
}

// RunGroupRef identifies a created run group in Stats.
type RunGroupRef struct {
	RunGroupID string `json:"run_group_id"`
	Name       string `json:"name"`
	ProjectID  string `json:"project_id"`
	Region     string `json:"region"`
}

// Run-group status values. The API does not enumerate them (omics-api.md
// §3.1); the sandbox creates groups as StatusPending and never advances
// them on its own (see Server.SetRunGroupStatus).
const StatusPending = "Pending"

// Times are reported in China Standard Time, like the API's examples.
var chinaStandardTime = time.FixedZone("CST", 8*60*60)

type projectKey struct{ region, project string }

type nameKey struct {
	projectKey
	name string
}

type storedGroup struct {
	region     string
	group      submit.RunGroup
	foldedName string // lowercase Name, for the fuzzy Name filter
	// visibleFrom is when DescribeRunGroups starts to see the group
	// (Visibility.Lag); the zero time means at once.
	visibleFrom time.Time
}

// store holds the run groups: its own lock, so listing never blocks the
// rate limiter.
type store struct {
	mu        sync.RWMutex
	rng       *rand.Rand // run-group IDs, reproducible per seed
	groups    []*storedGroup
	byID      map[string]*storedGroup
	byName    map[nameKey]*storedGroup
	byProject map[projectKey][]*storedGroup

	// visMu guards vis and visRng. DescribeRunGroups reads them without
	// holding mu exclusively; create takes visMu while holding mu, never
	// the other way round.
	visMu  sync.Mutex
	vis    Visibility
	visRng *rand.Rand // lags and page orders
}

func newStore(seed int64, vis Visibility) *store {
	return &store{
		// A stream distinct from the fault picker's, so enabling faults does
		// not change the IDs.
		rng:       rand.New(rand.NewPCG(uint64(seed), 0x5eed1d)),
		byID:      make(map[string]*storedGroup),
		byName:    make(map[nameKey]*storedGroup),
		byProject: make(map[projectKey][]*storedGroup),
		vis:       vis,
		// Distinct from the ID and fault streams, so enabling lag or
		// reordering changes neither.
		visRng: rand.New(rand.NewPCG(uint64(seed), 0x1a6)),
	}
}

// create stores a run group for a validated request, or reports that the
// name is taken in the project.
func (st *store) create(region, project string, req *runApplicationRequest, now time.Time) (submit.RunGroup, bool) {
	pk := projectKey{region, project}
	nk := nameKey{pk, req.Name}
	g := newRunGroup(project, req, now)

	st.mu.Lock()
	defer st.mu.Unlock()
	if _, taken := st.byName[nk]; taken {
		return submit.RunGroup{}, true
	}
	for {
		g.RunGroupId = runGroupID(st.rng)
		if _, taken := st.byID[g.RunGroupId]; !taken {
			break
		}
	}
	sg := &storedGroup{region: region, group: g, foldedName: strings.ToLower(g.Name), visibleFrom: st.visibleFrom(now)}
	st.groups = append(st.groups, sg)
	st.byID[g.RunGroupId] = sg
	st.byName[nk] = sg
	st.byProject[pk] = append(st.byProject[pk], sg)
	return g, false
}

func newRunGroup(project string, req *runApplicationRequest, now time.Time) submit.RunGroup {
	ts := now.In(chinaStandardTime).Format(time.RFC3339)
	g := submit.RunGroup{
		ProjectId:     project,
		ApplicationId: req.ApplicationId,
		AccessMode:    deref(req.AccessMode, defaultAccessMode),
		EnvironmentId: req.EnvironmentId,
		TableId:       deref(req.TableId, ""),
		Name:          req.Name,
		Description:   deref(req.Description, ""),
		Status:        StatusPending,
		Type:          "WDL",
		WorkDir:       deref(req.WorkDir, ""),
		Option:        req.Option.toRunGroup(),
		NFOption:      req.NFOption.toRunGroup(),
		TotalRun:      1,
		ExecutionTime: &submit.ExecutionTime{SubmitTime: ts},
		CreateTime:    ts,
		UpdateTime:    ts,
	}
	if req.NFOption != nil {
		g.Type = "NEXTFLOW"
	}
	if req.InputCosUri != nil {
		g.InputType, g.InputCosUri = "COS", *req.InputCosUri
	} else {
		g.InputType, g.Input = "JSON", string(req.input)
	}
	if n := len(req.TableRowUuids); n > 0 {
		g.TotalRun = uint64(n)
	}
	g.RunStatusCounts = []submit.RunStatusCount{{Status: StatusPending, Count: g.TotalRun}}
	return g
}

// toRunGroup copies the options into the shape DescribeRunGroups reports.
func (o *runOption) toRunGroup() *submit.RunOption {
	if o == nil {
		return nil
	}
	return &submit.RunOption{
		FailureMode:             o.FailureMode,
		UseCallCache:            o.UseCallCache,
		UseErrorOnHold:          o.UseErrorOnHold,
		FinalWorkflowOutputsDir: o.FinalWorkflowOutputsDir,
		UseRelativeOutputPaths:  o.UseRelativeOutputPaths,
		AddRunInfoToOutputDir:   o.AddRunInfoToOutputDir,
	}
}

func (o *nfOption) toRunGroup() *submit.NFOption {
	if o == nil {
		return nil
	}
	return &submit.NFOption{
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

// runGroupFilter is a list of clauses that must all match (Filters are
// AND-ed); a clause matches when any of its values does.
type runGroupFilter []filterClause

type filterClause struct {
	field  string   // Name, RunGroupId, Status, ApplicationId or Type
	values []string // lowercase for Name
}

func (f runGroupFilter) matches(sg *storedGroup) bool {
	for _, c := range f {
		if !c.matches(sg) {
			return false
		}
	}
	return true
}

func (c filterClause) matches(sg *storedGroup) bool {
	g := &sg.group
	switch c.field {
	case "Name":
		// Case-insensitive substring: the API's exact-or-fuzzy rule is
		// undocumented, so the sandbox answers with the superset and
		// clients must compare names themselves.
		return slices.ContainsFunc(c.values, func(v string) bool { return strings.Contains(sg.foldedName, v) })
	case "RunGroupId":
		return slices.Contains(c.values, g.RunGroupId)
	case "Status":
		return slices.Contains(c.values, g.Status)
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
func (st *store) describe(pk projectKey, f runGroupFilter, offset, limit uint64, now time.Time) (uint64, []submit.RunGroup) {
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
	page := make([]submit.RunGroup, 0, min(limit, 100))
	if shuffle != nil {
		var matched []*storedGroup
		for _, sg := range st.byProject[pk] {
			if sg.visibleAt(now) && f.matches(sg) {
				matched = append(matched, sg)
			}
		}
		shuffle.Shuffle(len(matched), func(i, j int) { matched[i], matched[j] = matched[j], matched[i] })
		total := uint64(len(matched))
		for i := offset; i < total && uint64(len(page)) < limit; i++ {
			page = append(page, matched[i].group)
		}
		return total, page
	}
	var total uint64
	for _, sg := range st.byProject[pk] {
		if !sg.visibleAt(now) || !f.matches(sg) {
			continue
		}
		if total >= offset && uint64(len(page)) < limit {
			page = append(page, sg.group)
		}
		total++
	}
	return total, page
}

func (st *store) setStatus(id, status string, now time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	sg, ok := st.byID[id]
	if !ok {
		return false
	}
	sg.group.Status = status
	sg.group.UpdateTime = now.In(chinaStandardTime).Format(time.RFC3339)
	sg.group.RunStatusCounts = []submit.RunStatusCount{{Status: status, Count: sg.group.TotalRun}}
	return true
}

func (st *store) all() []RunGroup {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]RunGroup, len(st.groups))
	for i, sg := range st.groups {
		out[i] = RunGroup{Region: sg.region, RunGroup: sg.group}
	}
	return out
}

func (st *store) refs() []RunGroupRef {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]RunGroupRef, len(st.groups))
	for i, sg := range st.groups {
		out[i] = RunGroupRef{RunGroupID: sg.group.RunGroupId, Name: sg.group.Name, ProjectID: sg.group.ProjectId, Region: sg.region}
	}
	return out
}

func (st *store) count() int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return len(st.groups)
}
