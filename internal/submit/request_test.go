package submit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// seedFiles are the two example bodies of the RunApplication reference page,
// copied verbatim.
var seedFiles = []string{"seed_singleton.json", "seed_batch.json"}

func readSeed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeMap(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return m
}

func TestSeedBodiesRoundTrip(t *testing.T) {
	t.Parallel()
	for _, name := range seedFiles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			seed := readSeed(t, name)
			var req RunApplicationRequest
			if err := json.Unmarshal(seed, &req); err != nil {
				t.Fatal(err)
			}
			out, err := json.Marshal(&req)
			if err != nil {
				t.Fatal(err)
			}
			got, want := decodeMap(t, out), decodeMap(t, seed)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("re-marshalled body differs from the seed\n got: %v\nwant: %v", got, want)
			}
		})
	}
}

func TestOptionalZeroValuesAreSentAndAbsentOnesAreNot(t *testing.T) {
	t.Parallel()
	req := RunApplicationRequest{
		ApplicationId:   "app-1",
		Name:            "n",
		EnvironmentId:   "env-1",
		CacheClearDelay: new(uint64(0)),
		Option:          &RunOption{UseCallCache: new(false)},
	}
	b, err := json.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	got := decodeMap(t, b)
	want := map[string]any{
		"ApplicationId":   "app-1",
		"Name":            "n",
		"EnvironmentId":   "env-1",
		"CacheClearDelay": float64(0),
		"Option":          map[string]any{"UseCallCache": false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestRunGroupDecodingIgnoresUnknownFields(t *testing.T) {
	t.Parallel()
	body := `{"TotalCount":1,"RequestId":"r-1","RunGroups":[{"RunGroupId":"rg-1","Name":"n","TotalRun":3,
		"ApplicationVersion":{"VersionId":"v"},"FieldFromTheFuture":{"x":[1,2]},
		"Option":{"FailureMode":"NoNewCalls"},"ExecutionTime":{"SubmitTime":"2024-01-01T00:00:00+08:00","EndTime":null},
		"RunStatusCounts":[{"Status":"RUNNING","Count":2}],"CreateTime":"2024-01-01T00:00:00+08:00"}]}`
	var resp DescribeRunGroupsResponse
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.TotalCount != 1 || len(resp.RunGroups) != 1 {
		t.Fatalf("got %+v", resp)
	}
	g := resp.RunGroups[0]
	if g.RunGroupId != "rg-1" || g.TotalRun != 3 || *g.Option.FailureMode != "NoNewCalls" ||
		g.ExecutionTime.SubmitTime == "" || g.RunStatusCounts[0].Count != 2 {
		t.Errorf("got %+v", g)
	}
}
