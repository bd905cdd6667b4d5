package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// runApplication validates and executes a RunApplication call. A non-empty
// commitFail makes a successful call fail after its run group was created.
func (s *Server) runApplication(c *call, body []byte, region string, commitFail CommitFailMode) {
	req, e := decodeRunApplication(body)
	if e != nil {
		c.fail(e)
		return
	}
	project := DefaultProjectID
	if req.ProjectId != nil {
		project = *req.ProjectId
	}
	if e := s.checkKnown(req, project); e != nil {
		c.fail(e)
		return
	}
	id, duplicate := s.store.create(region, project, req, s.now())
	if duplicate {
		s.mu.Lock()
		s.counts.duplicateNames++
		s.mu.Unlock()
		c.failAs(outcomeDuplicateName, errorf(codeDuplicateName, "a run group with this Name already exists in the project"))
		return
	}
	if commitFail != "" {
		s.commitThenFail(c, commitFail)
		return
	}
	c.respond(outcomeSuccess, runGroupIDAnswer{RunGroupId: id, RequestId: c.requestID})
}

func (s *Server) checkKnown(req *runApplicationRequest, project string) *apiError {
	k := &s.known
	switch {
	case project != DefaultProjectID && k.projects != nil && !k.projects[project]:
		return errorf(codeProjectNotExist, "the project (ProjectId) does not exist")
	case k.applications != nil && !k.applications[req.ApplicationId]:
		return errorf(codeApplicationNotExist, "the application (ApplicationId) does not exist")
	case k.environments != nil && !k.environments[req.EnvironmentId]:
		return errorf(codeEnvironmentNotExist, "the environment (EnvironmentId) does not exist")
	case req.TableId != nil && k.tables != nil && !k.tables[*req.TableId]:
		return errorf(codeTableNotExist, "the table (TableId) does not exist")
	}
	s.mu.Lock()
	down := s.unavailable[req.EnvironmentId]
	s.mu.Unlock()
	if down {
		return errorf(codeEnvironmentNotAvailable, "the environment (EnvironmentId) is not available")
	}
	return nil
}

// badGatewayBody is what a gateway in front of the API sends for a 502.
const badGatewayBody = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n" +
	"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"

// commitThenFail fails a call whose run group was created, so the client
// cannot tell whether it was.
func (s *Server) commitThenFail(c *call, mode CommitFailMode) {
	s.mu.Lock()
	s.counts.commitThenFail[mode]++
	s.mu.Unlock()
	c.finish(outcomeCommitPrefix + string(mode))
	switch mode {
	case CommitFailBadGateway:
		c.w.Header().Set("Content-Type", "text/html")
		c.w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(c.w, badGatewayBody)
	case CommitFailDrop:
		abortConnection(c.w)
	case CommitFailHang:
		t := time.NewTimer(s.hangTimeout)
		defer t.Stop()
		select {
		case <-c.r.Context().Done(): // the client gave up
		case <-t.C:
		case <-s.done:
		case <-listenerDone(c.r.Context()):
		}
		abortConnection(c.w)
	}
}

// abortConnection closes the client's connection without a response.
func abortConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2, a recorder): net/http's documented way to
		// abort a response without logging.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// describeRunGroupsFilters are the filter names DescribeRunGroups accepts
// (the SDK's comment; the intl page lists only the first three).
var describeRunGroupsFilters = []string{"Name", "RunGroupId", "Status", "ApplicationId", "Type"}

const (
	defaultDescribeLimit = 10
	maxDescribeLimit     = 100
)

var (
	describeKeys = map[string]bool{"ProjectId": true, "Filters": true, "Limit": true, "Offset": true}
	filterKeys   = map[string]bool{"Name": true, "Values": true}
)

func (s *Server) describeRunGroups(c *call, body []byte, region string) {
	pk, f, offset, limit, e := s.listParams(body, region, describeRunGroupsFilters)
	if e != nil {
		c.fail(e)
		return
	}
	total, page := s.store.describe(pk, runGroupFilter(f), offset, limit, s.now())
	c.respond(outcomeSuccess, describeRunGroupsAnswer{TotalCount: total, RunGroups: page, RequestId: c.requestID})
}

// listParams decodes and checks the parameters DescribeRunGroups and
// DescribeRuns share: the project, Limit (1 to 100, default 10), Offset
// and Filters whose names are in filterNames.
func (s *Server) listParams(body []byte, region string, filterNames []string) (projectKey, []filterClause, uint64, uint64, *apiError) {
	req, e := decodeListRequest(body)
	if e != nil {
		return projectKey{}, nil, 0, 0, e
	}
	project := DefaultProjectID
	if req.ProjectId != nil {
		project = *req.ProjectId
		if project == "" {
			return projectKey{}, nil, 0, 0, errorf(codeInvalidParameterValue, "ProjectId: must not be empty")
		}
		if e := s.checkProject(project); e != nil {
			return projectKey{}, nil, 0, 0, e
		}
	}
	limit := uint64(defaultDescribeLimit)
	if req.Limit != nil {
		limit = *req.Limit
		if limit < 1 || limit > maxDescribeLimit {
			return projectKey{}, nil, 0, 0, errorf(codeInvalidParameterValue, "Limit: must be 1 to %d", maxDescribeLimit)
		}
	}
	var offset uint64
	if req.Offset != nil {
		offset = *req.Offset
	}
	f, e := parseFilters(req.Filters, filterNames)
	if e != nil {
		return projectKey{}, nil, 0, 0, e
	}
	return projectKey{region, project}, f, offset, limit, nil
}

// checkProject answers ProjectNotExist for a project outside KnownProjects.
func (s *Server) checkProject(project string) *apiError {
	if project != DefaultProjectID && s.known.projects != nil && !s.known.projects[project] {
		return errorf(codeProjectNotExist, "the project (ProjectId) does not exist")
	}
	return nil
}

// decodeListRequest decodes strictly: keys match case-sensitively, each at
// most once, and unknown keys are UnknownParameter, as the API treats
// them.
func decodeListRequest(body []byte) (*listRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(codeInvalidParameter, "the request body is not valid UTF-8")
	}
	if e := checkExactKeys(body, "", describeKeys); e != nil {
		return nil, e
	}
	var probe struct{ Filters []json.RawMessage }
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, errorf(codeInvalidParameter, "Filters: must be an array of objects")
	}
	for _, raw := range probe.Filters {
		if e := checkExactKeys(raw, "Filters.", filterKeys); e != nil {
			return nil, e
		}
	}
	var req listRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			return nil, errorf(codeInvalidParameter, "%s: the value has the wrong JSON type", te.Field)
		}
		return nil, errorf(codeInvalidParameter, "the request body is not valid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errorf(codeInvalidParameter, "the request body has data after the JSON object")
	}
	return &req, nil
}

// checkExactKeys verifies that data is a JSON object whose keys are in
// allowed, each at most once. Unknown keys are not echoed: only the known
// field names appear in messages.
func checkExactKeys(data []byte, prefix string, allowed map[string]bool) *apiError {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return errorf(codeInvalidParameter, "the request body is not valid JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		if prefix != "" {
			return errorf(codeInvalidParameter, "%s: each element must be an object", strings.TrimSuffix(prefix, "."))
		}
		return errorf(codeInvalidParameter, "the request body must be a JSON object")
	}
	seen := make(map[string]bool, len(allowed))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errorf(codeInvalidParameter, "the request body is not valid JSON")
		}
		key, _ := tok.(string)
		if !allowed[key] {
			return errorf(codeUnknownParameter, "the request has a parameter %sthe API does not define", prefix)
		}
		if seen[key] {
			return errorf(codeInvalidParameter, "%s%s: the parameter is given more than once", prefix, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return errorf(codeInvalidParameter, "the request body is not valid JSON")
		}
	}
	if _, err := dec.Token(); err != nil {
		return errorf(codeInvalidParameter, "the request body is not valid JSON")
	}
	return nil
}

// parseFilters turns list filters into clauses; names outside allowed are
// InvalidParameterValue.
func parseFilters(filters []filter, allowed []string) ([]filterClause, *apiError) {
	f := make([]filterClause, 0, len(filters))
	for _, fl := range filters {
		if !slices.Contains(allowed, fl.Name) {
			return nil, errorf(codeInvalidParameterValue, "Filters.Name: must be one of %s", strings.Join(allowed, ", "))
		}
		if len(fl.Values) == 0 {
			return nil, errorf(codeInvalidParameterValue, "Filters.Values: must not be empty")
		}
		values := fl.Values
		if fl.Name == "Name" {
			values = make([]string, len(fl.Values))
			for i, v := range fl.Values {
				values[i] = strings.ToLower(v)
			}
		}
		f = append(f, filterClause{field: fl.Name, values: values})
	}
	return f, nil
}
