package sandbox

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
)

// maxOverlappingNames bounds Stats.OverlappingNames: enough to debug a
// client, never a copy of a benchmark's whole name space.
const maxOverlappingNames = 20

// inflightTracker counts RunApplication calls open at once per (region,
// project, Name). A client that promises exactly-once submission must
// never have two calls open for one request: if it does, both may be
// processed and it cannot know which answer to trust. The DuplicateName
// rule hides such overlaps from the run-group registry, so they are
// counted here. Server.mu guards it.
type inflightTracker struct {
	open       map[nameKey]int
	maxPerName int
	overlaps   int64
	names      []string // the first maxOverlappingNames distinct Names that overlapped
}

func (t *inflightTracker) begin(k nameKey) {
	n := t.open[k]
	if n > 0 {
		t.overlaps++
		if len(t.names) < maxOverlappingNames && !slices.Contains(t.names, k.name) {
			t.names = append(t.names, k.name)
		}
	}
	t.open[k] = n + 1
	t.maxPerName = max(t.maxPerName, n+1)
}

func (t *inflightTracker) end(k nameKey) {
	if n := t.open[k]; n > 1 {
		t.open[k] = n - 1
	} else {
		delete(t.open, k)
	}
}

// trackRunApplication opens the in-flight span of an admitted
// RunApplication call and returns the function that closes it, or nil if
// the body names no Name. The span ends at the earlier of the handler
// returning and ctx (the client's request) ending: a call the server
// still holds after the client gave up (a latency fault) no longer counts,
// because the client cannot see it and may rightly retry.
func (s *Server) trackRunApplication(ctx context.Context, body []byte, region string) func() {
	k, ok := inflightKey(body, region)
	if !ok {
		return nil
	}
	s.mu.Lock()
	s.inflight.begin(k)
	s.mu.Unlock()
	var once sync.Once
	end := func() {
		once.Do(func() {
			s.mu.Lock()
			s.inflight.end(k)
			s.mu.Unlock()
		})
	}
	stop := context.AfterFunc(ctx, end)
	return func() {
		stop()
		end()
	}
}

// inflightKey reads Name and ProjectId from a RunApplication body. It is
// lenient on purpose: tracking must not depend on the call being valid,
// and validation proper comes later. Keys match as encoding/json matches
// them (case-insensitively). A ProjectId that is absent, null, "" or not a
// string is the default project; a body that is not a JSON object, or
// whose Name is absent, null or not a string, is not tracked.
func inflightKey(body []byte, region string) (nameKey, bool) {
	// any, not *string: a mistyped ProjectId must not lose the Name.
	var probe struct{ Name, ProjectId any }
	if json.Unmarshal(body, &probe) != nil {
		return nameKey{}, false
	}
	name, ok := probe.Name.(string)
	if !ok {
		return nameKey{}, false
	}
	project, ok := probe.ProjectId.(string)
	if !ok || project == "" { // a blank ProjectId is the default project, as in RunApplication
		project = DefaultProjectID
	}
	return nameKey{projectKey{region, project}, name}, true
}
