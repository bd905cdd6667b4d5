package breaker

import (
	"maps"
	"os"
	"strings"
	"testing"
)

func TestDefaultActor(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		t.Skip("no host name")
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if got := DefaultActor(env(map[string]string{"USER": "alice"})); got != "alice@"+host {
		t.Errorf("with USER: %q", got)
	}
	if got := DefaultActor(env(nil)); got != "operator@"+host {
		t.Errorf("without USER: %q", got)
	}
}

func TestParseEdits(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		want map[string]string
	}{
		{nil, map[string]string{}},
		{[]string{"ApplicationId=app-1", " ProjectId =prj=2"}, map[string]string{KindApplication: "app-1", KindProject: "prj=2"}},
		{[]string{`TableId="tab 1"`, `EnvironmentId="unterminated`}, map[string]string{KindTable: "tab 1", KindEnvironment: `"unterminated`}},
	} {
		got, err := ParseEdits(tc.sets)
		if err != nil || !maps.Equal(got, tc.want) {
			t.Errorf("ParseEdits(%q) = %v, %v; want %v", tc.sets, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		sets []string
		want string
	}{
		{[]string{"ApplicationId"}, "--set wants Field=Value"},
		{[]string{" =x"}, "--set wants Field=Value"},
		{[]string{"ApplicationId=a", "ApplicationId=b"}, "--set ApplicationId given twice"},
		{[]string{"Name=renamed"}, `--set: only ApplicationId, ApplicationVersionId, ProjectId, TableId, EnvironmentId may be edited, not "Name"`},
		{[]string{"ApplicationId="}, "--set: ApplicationId must not be empty"},
		{[]string{`ApplicationId=" a"`}, "--set: ApplicationId has leading or trailing spaces"},
	} {
		if _, err := ParseEdits(tc.sets); err == nil || err.Error() != tc.want {
			t.Errorf("ParseEdits(%q) = %v, want %q", tc.sets, err, tc.want)
		}
	}
	if _, err := ParseEdits([]string{"ApplicationId=" + strings.Repeat("a", MaxIDBytes+1)}); err == nil {
		t.Error("an oversized value was accepted")
	}
}
