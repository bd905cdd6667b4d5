package sandbox

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

func TestDescribeRunGroups(t *testing.T) {
	t.Parallel()
	s, l := startSandbox(t, Options{})
	c := newClient(t, l.Addr(), defaultCred(), 5*time.Second)
	ctx := t.Context()

	var created []string // creation order
	for i := range 25 {
		resp, err := c.RunApplication(ctx, runRequest(fmt.Sprintf("Sample-%02d", i)))
		if err != nil {
			t.Fatalf("RunApplication %d: %v", i, err)
		}
		created = append(created, resp.RunGroupId)
	}
	nf := runRequest("nextflow-1")
	nf.NFOption = &submit.NFOption{NFVersion: new("23.10.1")}
	nf.ProjectId = new("prj-other")
	if _, err := c.RunApplication(ctx, nf); err != nil {
		t.Fatalf("RunApplication in prj-other: %v", err)
	}

	describe := func(t *testing.T, req *submit.DescribeRunGroupsRequest) *submit.DescribeRunGroupsResponse {
		t.Helper()
		resp, err := c.DescribeRunGroups(ctx, req)
		if err != nil {
			t.Fatalf("DescribeRunGroups: %v", err)
		}
		return resp
	}
	ids := func(groups []submit.RunGroup) []string {
		out := make([]string, len(groups))
		for i, g := range groups {
			out[i] = g.RunGroupId
		}
		return out
	}

	t.Run("paging in creation order", func(t *testing.T) {
		var got []string
		for _, offset := range []uint64{0, 10, 20, 30} {
			resp := describe(t, &submit.DescribeRunGroupsRequest{Offset: new(offset)})
			if resp.TotalCount != 25 {
				t.Fatalf("offset %d: TotalCount %d, want 25 (default project only)", offset, resp.TotalCount)
			}
			wantLen := min(10, max(0, 25-int(offset)))
			if len(resp.RunGroups) != wantLen {
				t.Fatalf("offset %d: %d groups, want %d (default Limit 10)", offset, len(resp.RunGroups), wantLen)
			}
			got = append(got, ids(resp.RunGroups)...)
		}
		if !slices.Equal(got, created) {
			t.Errorf("paged ids = %v, want creation order %v", got, created)
		}
		resp := describe(t, &submit.DescribeRunGroupsRequest{Limit: new(uint64(100))})
		if len(resp.RunGroups) != 25 {
			t.Errorf("Limit 100: %d groups, want 25", len(resp.RunGroups))
		}
	})

	t.Run("Name matches by case-insensitive substring", func(t *testing.T) {
		resp := describe(t, &submit.DescribeRunGroupsRequest{
			Filters: []submit.Filter{{Name: "Name", Values: []string{"sample-1"}}},
			Limit:   new(uint64(100)),
		})
		// Sample-1x (10 of them); a fuzzy superset of the exact name.
		if resp.TotalCount != 10 {
			t.Errorf("TotalCount = %d, want 10", resp.TotalCount)
		}
		exact, err := c.FindRunGroupsByName(ctx, nil, "Sample-10", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(exact) != 1 || exact[0].RunGroupId != created[10] {
			t.Errorf("FindRunGroupsByName(Sample-10) = %v, want [%s]", ids(exact), created[10])
		}
	})

	t.Run("RunGroupId, Status, Type and ApplicationId filters", func(t *testing.T) {
		resp := describe(t, &submit.DescribeRunGroupsRequest{
			Filters: []submit.Filter{{Name: "RunGroupId", Values: []string{created[3], created[7]}}},
		})
		if got := ids(resp.RunGroups); !slices.Equal(got, []string{created[3], created[7]}) {
			t.Errorf("RunGroupId filter = %v", got)
		}
		if !s.SetRunGroupStatus(created[5], "Running") {
			t.Fatal("SetRunGroupStatus: no such group")
		}
		resp = describe(t, &submit.DescribeRunGroupsRequest{
			Filters: []submit.Filter{{Name: "Status", Values: []string{"Running"}}},
		})
		if got := ids(resp.RunGroups); !slices.Equal(got, []string{created[5]}) || resp.RunGroups[0].Status != "Running" {
			t.Errorf("Status filter = %v", got)
		}
		resp = describe(t, &submit.DescribeRunGroupsRequest{
			ProjectId: new("prj-other"),
			Filters: []submit.Filter{
				{Name: "Type", Values: []string{"NEXTFLOW"}},
				{Name: "ApplicationId", Values: []string{"app-sweet-cerulean-frog-569111"}},
			},
		})
		if resp.TotalCount != 1 || resp.RunGroups[0].Type != "NEXTFLOW" || resp.RunGroups[0].ProjectId != "prj-other" {
			t.Errorf("prj-other NEXTFLOW = %+v", resp)
		}
		// Filters are AND-ed.
		resp = describe(t, &submit.DescribeRunGroupsRequest{
			Filters: []submit.Filter{
				{Name: "Name", Values: []string{"sample-0"}},
				{Name: "RunGroupId", Values: []string{created[12]}},
			},
		})
		if resp.TotalCount != 0 {
			t.Errorf("contradictory filters matched %d groups", resp.TotalCount)
		}
	})

	t.Run("invalid requests", func(t *testing.T) {
		for name, tc := range map[string]struct {
			req  *submit.DescribeRunGroupsRequest
			want string
		}{
			"Limit 101":      {&submit.DescribeRunGroupsRequest{Limit: new(uint64(101))}, codeInvalidParameterValue},
			"Limit 0":        {&submit.DescribeRunGroupsRequest{Limit: new(uint64(0))}, codeInvalidParameterValue},
			"unknown filter": {&submit.DescribeRunGroupsRequest{Filters: []submit.Filter{{Name: "Colour", Values: []string{"x"}}}}, codeInvalidParameterValue},
			"empty values":   {&submit.DescribeRunGroupsRequest{Filters: []submit.Filter{{Name: "Name"}}}, codeInvalidParameterValue},
			"empty project":  {&submit.DescribeRunGroupsRequest{ProjectId: new("")}, codeInvalidParameterValue},
		} {
			_, err := c.DescribeRunGroups(ctx, tc.req)
			if e, ok := err.(*submit.Error); !ok || e.Code != tc.want {
				t.Errorf("%s: err = %v, want %s", name, err, tc.want)
			}
		}
		url := "http://" + l.Addr() + "/"
		for body, want := range map[string]string{
			`{"Limit":10,"Offest":0}`:                     codeUnknownParameter,
			`{"limit":10}`:                                codeUnknownParameter,
			`{"Filters":[{"Name":"Name","Value":["x"]}]}`: codeUnknownParameter,
			`{"Limit":"10"}`:                              codeInvalidParameter,
			`{"Limit":-1}`:                                codeInvalidParameter,
			`{"Filters":{"Name":"Name"}}`:                 codeInvalidParameter,
			`{"Limit":1,"Limit":2}`:                       codeInvalidParameter,
			`{} {}`:                                       codeInvalidParameter,
			`{"Filters":[{"Name":"Name","Values":["x"]}]}  `: "",
		} {
			a := send(t, rawRequest{action: actionDescribeRunGroups, body: []byte(body)}.build(t, url))
			if got := answerCode(a); got != want {
				t.Errorf("body %s: code %q, want %q", body, got, want)
			}
		}
	})

	t.Run("known projects", func(t *testing.T) {
		_, l2 := startSandbox(t, Options{KnownProjects: []string{"prj-a"}})
		c2 := newClient(t, l2.Addr(), defaultCred(), 5*time.Second)
		for project, want := range map[string]string{"prj-a": "", "prj-b": codeProjectNotExist, DefaultProjectID: ""} {
			_, err := c2.DescribeRunGroups(ctx, &submit.DescribeRunGroupsRequest{ProjectId: new(project)})
			got := ""
			if e, ok := err.(*submit.Error); ok {
				got = e.Code
			} else if err != nil {
				t.Fatalf("%s: %v", project, err)
			}
			if got != want {
				t.Errorf("project %s: code %q, want %q", project, got, want)
			}
		}
	})
}
