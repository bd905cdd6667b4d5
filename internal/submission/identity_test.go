package submission

import (
	"testing"
	"time"

	"github.com/omicsq/omicsq/internal/submit"
)

func TestIdentityIgnoresSpellingButNotContent(t *testing.T) {
	a, b := req("S-1"), req("S-1")
	if !IdentityOf(a, t0).Same(IdentityOf(b, t0.Add(time.Hour))) {
		t.Error("the same request pins different identities")
	}
	desc := "re-analysis"
	b.Description = &desc
	if got := IdentityOf(a, t0).Differences(IdentityOf(b, t0)); got != "request" {
		t.Errorf("Differences = %q, want request", got)
	}
	if got := IdentityOf(a, t0).Differences(IdentityOf(req("S-2"), t0)); got != "Name" {
		t.Errorf("Differences = %q, want Name", got)
	}
	p := "prj-2"
	c := req("S-1")
	c.ProjectId = &p
	if got := IdentityOf(a, t0).Differences(IdentityOf(c, t0)); got != "ProjectId" {
		t.Errorf("Differences = %q, want ProjectId", got)
	}
}

// group is what the sandbox (and the API) reports for req.
func group(r *submit.RunApplicationRequest) submit.RunGroup {
	return submit.RunGroup{RunGroupId: "run-1", ProjectId: "prj-default", Name: r.Name, ApplicationId: r.ApplicationId,
		EnvironmentId: r.EnvironmentId, AccessMode: "PRIVATE", Input: `{"wf.sample": "S-1"}`, InputType: "JSON",
		TotalRun: 1, CreateTime: t0.Add(time.Second).In(time.FixedZone("CST", 8*3600)).Format(time.RFC3339)}
}

// Scenario 3 of issue 11: ownership is decided on the whole request, and a
// field the request leaves out matches only its default.
func TestOwns(t *testing.T) {
	skew := time.Minute
	for _, tc := range []struct {
		name   string
		change func(*submit.RunGroup)
		want   bool
	}{
		{"the group the request made", func(*submit.RunGroup) {}, true},
		{"another sample's input", func(g *submit.RunGroup) { g.Input = `{"wf.sample":"S-2"}` }, false},
		{"a description the request did not give", func(g *submit.RunGroup) { g.Description = "other" }, false},
		{"a table the request did not give", func(g *submit.RunGroup) { g.TableId = "tbl-1" }, false},
		{"public access the request did not ask for", func(g *submit.RunGroup) { g.AccessMode = "PUBLIC" }, false},
		{"options the request did not give", func(g *submit.RunGroup) { g.Option = &submit.RunOption{UseCallCache: new(true)} }, false},
		{"default options spelled out", func(g *submit.RunGroup) { g.Option = &submit.RunOption{UseCallCache: new(false)} }, true},
		{"a work dir the request did not give", func(g *submit.RunGroup) { g.WorkDir = "/data/w" }, false},
		{"created before the request's first call", func(g *submit.RunGroup) {
			g.CreateTime = t0.Add(-2 * time.Hour).Format(time.RFC3339)
		}, false},
		{"created within the skew", func(g *submit.RunGroup) { g.CreateTime = t0.Add(-30 * time.Second).Format(time.RFC3339) }, true},
		{"another environment", func(g *submit.RunGroup) { g.EnvironmentId = "env-2" }, false},
		{"a pinned version the group does not run", func(g *submit.RunGroup) {
			g.ApplicationVersion = []byte(`{"ApplicationVersionId":"v-9"}`)
		}, true}, // the request pins none: any version matches "latest"
		{"input re-encoded by the API", func(g *submit.RunGroup) { g.Input = "{\n  \"wf.sample\" : \"S-1\"\n}" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := req("S-1")
			g := group(r)
			tc.change(&g)
			if got := Owns(&g, r, t0, skew); got != tc.want {
				t.Errorf("Owns = %v, want %v", got, tc.want)
			}
		})
	}
	r := req("S-1")
	r.Option = &submit.RunOption{UseCallCache: new(true)}
	g := group(r)
	g.Option = &submit.RunOption{UseCallCache: new(true)}
	if !Owns(&g, r, t0, skew) {
		t.Error("matching options not owned")
	}
	v := "v-1"
	r.ApplicationVersionId = &v
	g.ApplicationVersion = []byte(`{"ApplicationVersionId":"v-9"}`)
	if Owns(&g, r, t0, skew) {
		t.Error("a group running another pinned version was owned")
	}
}
