package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

const examplesDir = "../../examples"

func parseExample(t *testing.T, name string) ([]item, []*samplesheet.Error) {
	t.Helper()
	path := filepath.Join(examplesDir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := samplesheet.NewParser(samplesheet.Options{Limits: submit.DefaultLimits(), ReadFile: os.ReadFile})
	return p.Parse(name, filepath.Dir(path), data, samplesheet.FormatAuto)
}

func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestTencentDocsExamplesAreVerbatim compares the examples with the
// request bodies of the RunApplication page (kept byte for byte in
// internal/submit/testdata).
func TestTencentDocsExamplesAreVerbatim(t *testing.T) {
	t.Parallel()
	for example, seed := range map[string]string{"singleton.json": "seed_singleton.json", "batch.json": "seed_batch.json"} {
		got, err := os.ReadFile(filepath.Join(examplesDir, "tencent-docs", example))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("../../internal/submit/testdata", seed))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("examples/tencent-docs/%s differs from the documentation's body", example)
		}
	}
}

func TestValidExamples(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]int{
		"tencent-docs/singleton.json": 1,
		"tencent-docs/batch.json":     1,
		"seed-examples.json":          2,
		"samples.csv":                 20,
	} {
		items, errs := parseExample(t, name)
		if len(errs) != 0 || len(items) != want {
			t.Errorf("%s: %d items (want %d), errors %v", name, len(items), want, errs)
		}
	}
}

// TestSeedExamples checks seed-examples.json is the two documented bodies
// with only their Names changed.
func TestSeedExamples(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(examplesDir, "seed-examples.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct{ file, name string }{
		{"singleton.json", "seed-singleton-example"}, {"batch.json", "seed-batch-example"},
	} {
		raw, err := os.ReadFile(filepath.Join(examplesDir, "tencent-docs", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		want := decodeJSON(t, raw).(map[string]any)
		want["Name"] = tc.name
		if !reflect.DeepEqual(got[i], want) {
			t.Errorf("seed-examples.json[%d] is not %s renamed to %s", i, tc.file, tc.name)
		}
	}
	// The two documentation bodies share a Name: in one run, the second is
	// rejected as the API would reject it.
	items, _ := parseExample(t, "tencent-docs/singleton.json")
	more, _ := parseExample(t, "tencent-docs/batch.json")
	_, errs := samplesheet.CrossCheck(append(items, more...))
	if len(errs) != 1 || errs[0].Code != samplesheet.CodeDuplicateName {
		t.Errorf("singleton + batch: errors %v, want one DuplicateName", errs)
	}
}

// TestSamplesCSV checks each row's input JSON was read from its input_json
// file, and every input file is used.
func TestSamplesCSV(t *testing.T) {
	t.Parallel()
	items, errs := parseExample(t, "samples.csv")
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	used := map[string]bool{}
	for _, it := range items {
		file := filepath.Join(examplesDir, "inputs", it.RunApplication.Name+".json")
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: %v", it.Loc, err)
		}
		got, err := base64.StdEncoding.DecodeString(*it.RunApplication.InputBase64)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: InputBase64 is not %s", it.Loc, file)
		}
		if !it.KeyGiven || !strings.HasPrefix(it.Key, "omicsq-example-sample-") {
			t.Errorf("%s: key %q", it.Loc, it.Key)
		}
		used[filepath.Base(file)] = true
	}
	entries, err := os.ReadDir(filepath.Join(examplesDir, "inputs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !used[e.Name()] {
			t.Errorf("examples/inputs/%s is not used by samples.csv", e.Name())
		}
	}
	if len(entries) != 20 {
		t.Errorf("%d input files, want 20", len(entries))
	}
}

// TestInvalidExamples checks every line of invalid.jsonl fails for its own
// documented reason.
func TestInvalidExamples(t *testing.T) {
	t.Parallel()
	items, errs := parseExample(t, "invalid.jsonl")
	if len(items) != 0 {
		t.Errorf("%d lines of invalid.jsonl are valid", len(items))
	}
	want := []struct{ code, field string }{
		{submit.CodeMissingParameter, "Name"},
		{submit.CodeMissingParameter, "InputBase64"},
		{submit.CodeInvalidParameter, "InputCosUri"},
		{submit.CodeInvalidBase64Encode, "InputBase64"},
		{submit.CodeInvalidInputJSONFormat, "InputBase64"},
		{submit.CodeInvalidRunOption, "Option.FailureMode"},
		{submit.CodeInvalidParameterValue, "AccessMode"},
		{submit.CodeUnknownParameter, "Priority"},
		{submit.CodeInvalidParameter, "CacheClearDelay"},
		{submit.CodeInvalidTimeoutMinutes, "TimeoutNotificationMinutes"},
		{submit.CodeInvalidParameter, "Name"},               // a duplicated key
		{submit.CodeMissingParameter, "NFOption.LaunchDir"}, // a COS WorkDir needs a launch dir
	}
	if len(errs) != len(want) {
		t.Fatalf("%d errors, want %d: %v", len(errs), len(want), errs)
	}
	seen := map[[3]string]int{}
	for i, e := range errs {
		if e.Loc.Line != i+1 || e.Code != want[i].code || e.Field != want[i].field {
			t.Errorf("line %d: got %s, want %s %s", i+1, e, want[i].field, want[i].code)
		}
		k := [3]string{e.Code, e.Field, e.Reason}
		if prev, dup := seen[k]; dup {
			t.Errorf("lines %d and %d fail for the same reason: %s", prev, i+1, e)
		}
		seen[k] = i + 1
	}
}

// TestDryRunAcceptsTheAllowedCorpus: every body the RunApplication page
// allows (testdata/runapplication/allowed, the corpus the sandbox is tested
// against too) passes enqueue's checks, and every forbidden one is refused
// naming its field.
func TestDryRunAcceptsTheAllowedCorpus(t *testing.T) {
	t.Parallel()
	allowed, err := filepath.Glob("../../testdata/runapplication/allowed/*.json")
	if err != nil || len(allowed) < 45 {
		t.Fatalf("%d allowed corpus bodies (%v)", len(allowed), err)
	}
	// One file per run: the page's two examples share a Name, which enqueue
	// refuses within one run (run-group names must be unique).
	for _, f := range allowed {
		if r := runWith(t, nil, "", "--dry-run", f); r.Code != 0 {
			t.Errorf("enqueue --dry-run %s: exit %d\n%s", filepath.Base(f), r.Code, r.Stderr)
		}
	}
	forbidden, _ := filepath.Glob("../../testdata/runapplication/forbidden/*.json")
	for _, f := range forbidden {
		want, err := os.ReadFile(strings.TrimSuffix(f, ".json") + ".want")
		if err != nil {
			t.Fatal(err)
		}
		code, field, _ := strings.Cut(strings.TrimSpace(string(want)), " ")
		if strings.HasPrefix(filepath.Base(f), "body_") {
			// What a message body may not be, as a whole: for enqueue a file
			// is a document of requests (an array is a list of them), and
			// its syntax errors are reported as InvalidSyntax.
			continue
		}
		if code == submit.CodeRequestSizeLimitExceeded {
			continue // the API's 10 MB body limit; enqueue's own bound is --max-message-bytes
		}
		r := runWith(t, nil, "", "--dry-run", f)
		if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, code) || (field != "-" && !strings.Contains(r.Stdout+r.Stderr, field)) {
			t.Errorf("%s: exit %d, want a refusal naming %s %s\n%s%s", filepath.Base(f), r.Code, code, field, r.Stdout, r.Stderr)
		}
	}
}
