package samplesheet_test

import (
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

// secret stands for a patient or sample identifier: no error may echo it.
const secret = "PATIENT-4711-SECRET"

const base = `"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K"`

// memFiles is a readFile over a map; missing paths fail like os.ReadFile.
func memFiles(files map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := files[filepath.ToSlash(p)]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
}

// testOptions read input_json files from files.
func testOptions(files map[string]string) samplesheet.Options {
	return samplesheet.Options{Limits: submit.DefaultLimits(), ReadFile: memFiles(files)}
}

// canonical decodes body the way the worker does and re-encodes it.
func canonical(t *testing.T, body string) []byte {
	t.Helper()
	req, err := submit.DecodeRunApplication([]byte(body), submit.DefaultLimits())
	if err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type wantItem struct {
	loc  string
	key  string // "" means derived from the body
	body string // the request as given, before canonicalisation
}

type wantErr struct {
	text string // the whole error line
}

// parseInputs are the input_json files the parse cases may name.
var parseInputs = map[string]string{
	"sheet/inputs/a.json": `{"wf.sample": "S1"}`,
	"sheet/inputs/b.json": `{"wf.sample": "S2"}` + "\n",
	"sheet/bad.json":      `{"wf.sample": ` + secret,
}

// parseCase is one input and every request and error it yields.
type parseCase struct {
	name  string
	file  string
	f     samplesheet.Format
	data  string
	items []wantItem
	errs  []wantErr
}

var parseCases = []parseCase{
	{
		name:  "json object",
		file:  "one.json",
		data:  "  {\n" + base + `,"Name":"n1"}` + "\n",
		items: []wantItem{{loc: "one.json", body: `{` + base + `,"Name":"n1"}`}},
	},
	{
		name:  "json envelope",
		file:  "one.json",
		data:  `{"key":"lims-0001","request":{` + base + `,"Name":"n1"}}`,
		items: []wantItem{{loc: "one.json", key: "lims-0001", body: `{` + base + `,"Name":"n1"}`}},
	},
	{
		name: "json array with envelopes",
		file: "many.json",
		data: "[\n  {" + base + `,"Name":"n1"},` + "\n" +
			`  {"request":{` + base + `,"Name":"n2"}},` + "\n" +
			`  {"key":"k-3","request":{` + base + `,"Name":"n3"}}` + "\n]\n",
		items: []wantItem{
			{loc: "many.json[0]", body: `{` + base + `,"Name":"n1"}`},
			{loc: "many.json[1]", body: `{` + base + `,"Name":"n2"}`},
			{loc: "many.json[2]", key: "k-3", body: `{` + base + `,"Name":"n3"}`},
		},
	},
	{
		name: "json array item errors name index and line",
		file: "many.json",
		data: "[\n  {" + base + `,"Name":"n1"},` + "\n\n" +
			`  {"ApplicationId":"app-1","EnvironmentId":"env-1","Description":"` + secret + `"},` + "\n" +
			`  {` + base + `,"Name":"n3","Option":{"FailureMode":"` + secret + `"}}` + "\n]",
		items: []wantItem{{loc: "many.json[0]", body: `{` + base + `,"Name":"n1"}`}},
		errs: []wantErr{
			{"many.json[1] (line 4): Name: MissingParameter: parameter is required"},
			{"many.json[2] (line 5): Option.FailureMode: InvalidParameterValue.InvalidRunOption: must be ContinueWhilePossible or NoNewCalls"},
		},
	},
	{
		name: "json syntax error names the line",
		file: "bad.json",
		data: "[\n{" + base + `,"Name":"n1"},` + "\n{\"Name\": " + secret + "}]",
		errs: []wantErr{{"bad.json (line 3): InvalidSyntax: invalid JSON syntax"}},
		items: []wantItem{
			{loc: "bad.json[0]", body: `{` + base + `,"Name":"n1"}`},
		},
	},
	{
		name: "json unexpected end",
		file: "bad.json",
		data: "{\n\"Name\": \"" + secret,
		errs: []wantErr{{"bad.json (line 2): InvalidSyntax: unexpected end of input: an unclosed object, array or string"}},
	},
	{
		name: "json trailing data",
		file: "two.json",
		data: `{` + base + `,"Name":"n1"}` + "\n" + `{` + base + `,"Name":"n2"}`,
		errs: []wantErr{{"two.json (line 2): InvalidSyntax: data after the JSON value; use an array or JSON Lines for several requests"}},
	},
	{
		name: "json not an object",
		file: "x.json",
		data: `["` + secret + `"]`,
		errs: []wantErr{{"x.json[0] (line 1): InvalidItem: each request must be a JSON object"}},
	},
	{
		name: "empty json",
		file: "x.json",
		data: " \n",
		errs: []wantErr{{"x.json: InvalidSyntax: the file is empty; want a JSON object or an array of objects"}},
	},
	{
		name: "jsonl with blank lines and CRLF",
		file: "runs.jsonl",
		data: "\r\n{" + base + `,"Name":"n1"}` + "\r\n\n   \n" +
			`{"key":"k2","request":{` + base + `,"Name":"n2"}}` + "\r\n" +
			`{` + base + `,"Name":"n3","AccessMode":"` + secret + `"}` + "\n" +
			`{` + base + `,"Name":"n4","CacheClearDelay":"` + secret + `"}` + "\n" +
			`{"Name": ` + secret + "\n",
		items: []wantItem{
			{loc: "runs.jsonl:2", body: `{` + base + `,"Name":"n1"}`},
			{loc: "runs.jsonl:5", key: "k2", body: `{` + base + `,"Name":"n2"}`},
		},
		errs: []wantErr{
			{"runs.jsonl:6: AccessMode: InvalidParameterValue: must be PRIVATE or PUBLIC"},
			{"runs.jsonl:7: CacheClearDelay: InvalidParameter: value has the wrong JSON type, want a non-negative integer"},
			{"runs.jsonl:8: InvalidSyntax: the line is not one JSON value"},
		},
	},
	{
		name: "jsonl envelope errors",
		file: "e.jsonl",
		data: `{"key":"k1","request":{` + base + `,"Name":"n1"},"note":"` + secret + `"}` + "\n" +
			`{"key":42,"request":{` + base + `,"Name":"n2"}}` + "\n" +
			`{"key":"has space ` + secret + `","request":{` + base + `,"Name":"n3"}}` + "\n" +
			`{"key":"k4","request":"` + secret + `"}` + "\n" +
			`{"key":"k5","Request":{` + base + `,"Name":"n5"}}` + "\n",
		errs: []wantErr{
			{`e.jsonl:1: note: InvalidItem: an envelope holds only "key" and "request"`},
			{"e.jsonl:2: key: InvalidIdempotencyKey: the key must be a JSON string"},
			{"e.jsonl:3: key: InvalidIdempotencyKey: idempotency key contains spaces or control characters"},
			{"e.jsonl:4: InvalidParameter: request body must be a JSON object"},
			{"e.jsonl:5: key: UnknownParameter: the API defines no such parameter"},
		},
	},
	{
		name: "empty jsonl",
		file: "e.jsonl",
		data: "\n\n",
		errs: []wantErr{{"e.jsonl: InvalidSyntax: the file holds no request"}},
	},
	{
		name: "csv with input_json, aliases, lists and nested columns",
		file: "sheet/samples.csv",
		data: "\ufeffkey, Name ,ApplicationId,EnvironmentId,input_json,TableId,TableRowUuids,FailureMode,UseCallCache,Option.UseErrorOnHold,CacheClearDelay,NFOption.Resume,VolumeIds\n" +
			"k-1,S1,app-1,env-1,inputs/a.json,tab-1, r1 ; r2 ;,NoNewCalls,TRUE,false,24,,\n" +
			",,,,,,,,,,,,\n" +
			",S2,app-1,env-1,inputs/b.json,,,,,,0,true,vol-1;vol-2\n",
		items: []wantItem{
			{loc: "sheet/samples.csv:row2", key: "k-1", body: `{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S1",` +
				`"InputBase64":"` + b64(`{"wf.sample": "S1"}`) + `","TableId":"tab-1","TableRowUuids":["r1","r2"],` +
				`"Option":{"FailureMode":"NoNewCalls","UseCallCache":true,"UseErrorOnHold":false},"CacheClearDelay":24}`},
			{loc: "sheet/samples.csv:row4", body: `{"ApplicationId":"app-1","EnvironmentId":"env-1","Name":"S2",` +
				`"InputBase64":"` + b64(`{"wf.sample": "S2"}`+"\n") + `","CacheClearDelay":0,"NFOption":{"Resume":true},"VolumeIds":["vol-1","vol-2"]}`},
		},
	},
	{
		name: "csv row errors name row and column",
		file: "sheet/samples.csv",
		data: "Name,ApplicationId,EnvironmentId,input_json,InputBase64,UseCallCache,CacheClearDelay,Option.FailureMode\n" +
			secret + ",app-1,env-1,inputs/a.json,,maybe,,\n" +
			secret + ",app-1,env-1,inputs/a.json,,,-1,\n" +
			secret + ",app-1,env-1,inputs/missing-" + secret + ".json,,,,\n" +
			secret + ",app-1,env-1,bad.json,,,,\n" +
			secret + ",app-1,env-1,inputs/a.json,e30K,,,\n" +
			secret + ",app-1,env-1,inputs/a.json,,,," + secret + "\n" +
			secret + ",app-1,env-1\n" +
			",app-1,env-1,inputs/a.json,,,,\n",
		errs: []wantErr{
			{"sheet/samples.csv:row2: UseCallCache: InvalidCell: must be true or false"},
			{"sheet/samples.csv:row3: CacheClearDelay: InvalidCell: must be a non-negative integer"},
			{"sheet/samples.csv:row4: input_json: InputJsonFile: cannot read the file: file does not exist"},
			{"sheet/samples.csv:row5: input_json: InputJsonFile: the file is not a JSON document"},
			{"sheet/samples.csv:row6: input_json: InputJsonFile: input_json and InputBase64 are mutually exclusive"},
			{"sheet/samples.csv:row7: Option.FailureMode: InvalidParameterValue.InvalidRunOption: must be ContinueWhilePossible or NoNewCalls"},
			{"sheet/samples.csv:row8: InvalidSyntax: the row has 3 cells, the header 8"},
			{"sheet/samples.csv:row9: Name: MissingParameter: parameter is required"},
		},
	},
	{
		name: "csv unknown column",
		file: "s.csv",
		data: "Name,ApplicationID\nn,app-1\n",
		errs: []wantErr{{`s.csv:row1: InvalidSyntax: header: column "ApplicationID" is not a RunApplication field, key or input_json (names are case-sensitive)`}},
	},
	{
		name: "csv object column",
		file: "s.csv",
		data: "Name,Option\nn,x\n",
		errs: []wantErr{{`s.csv:row1: InvalidSyntax: header: column "Option" is an object; use one column per field, e.g. Option.FailureMode`}},
	},
	{
		name: "csv alias and full name together",
		file: "s.csv",
		data: "Name,FailureMode,Option.FailureMode\nn,NoNewCalls,NoNewCalls\n",
		errs: []wantErr{{`s.csv:row1: InvalidSyntax: header: columns "FailureMode" and "Option.FailureMode" set the same field`}},
	},
	{
		name: "csv bad quoting stops with the row",
		file: "s.csv",
		data: "Name,ApplicationId,EnvironmentId,InputBase64\nn1,app-1,env-1,e30K\n\"n2,app-1,env-1,e30K\n",
		items: []wantItem{
			{loc: "s.csv:row2", body: `{"Name":"n1","ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K"}`},
		},
		errs: []wantErr{{`s.csv:row3: InvalidSyntax: invalid CSV at line 3, column 22: extraneous or missing " in quoted-field`}},
	},
	{
		name: "csv header only",
		file: "s.csv",
		data: "Name,ApplicationId\n",
		errs: []wantErr{{"s.csv: InvalidSyntax: the file has a header but no rows"}},
	},
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := samplesheet.NewParser(testOptions(parseInputs))
			f := tc.f
			if f == "" {
				f = samplesheet.FormatAuto
			}
			items, errs := p.Parse(tc.file, filepath.Dir(tc.file), []byte(tc.data), f)
			if len(items) != len(tc.items) {
				t.Errorf("got %d items, want %d", len(items), len(tc.items))
			}
			for i := range min(len(items), len(tc.items)) {
				got, want := items[i], tc.items[i]
				if got.Loc.String() != want.loc {
					t.Errorf("item %d: location %q, want %q", i, got.Loc, want.loc)
				}
				wantBody := canonical(t, want.body)
				if string(got.Body) != string(wantBody) {
					t.Errorf("item %d: body\n got %s\nwant %s", i, got.Body, wantBody)
				}
				wantKey, given := want.key, want.key != ""
				if !given {
					wantKey = client.DeriveKey(wantBody)
				}
				if got.Key != wantKey || got.KeyGiven != given {
					t.Errorf("item %d: key %q (given %v), want %q (given %v)", i, got.Key, got.KeyGiven, wantKey, given)
				}
			}
			var gotErrs []string
			for _, e := range errs {
				gotErrs = append(gotErrs, e.Error())
				if strings.Contains(e.Error(), secret) {
					t.Errorf("error echoes a request value: %s", e)
				}
			}
			var wantErrs []string
			for _, w := range tc.errs {
				wantErrs = append(wantErrs, w.text)
			}
			if !reflect.DeepEqual(gotErrs, wantErrs) {
				t.Errorf("errors\n got %q\nwant %q", gotErrs, wantErrs)
			}
		})
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestCSVDefaults(t *testing.T) {
	t.Parallel()
	opts := testOptions(nil)
	opts.Defaults = samplesheet.Defaults{ApplicationID: "app-d", EnvironmentID: "env-d", ProjectID: "prj-d"}
	data := "Name,ApplicationId,InputCosUri\nn1,,cos://b/x.json\nn2,app-own,cos://b/y.json\n"
	items, errs := samplesheet.NewParser(opts).Parse("s.csv", ".", []byte(data), samplesheet.FormatAuto)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	for i, wantApp := range []string{"app-d", "app-own"} {
		r := items[i].RunApplication
		if r.ApplicationId != wantApp || r.EnvironmentId != "env-d" || r.ProjectId == nil || *r.ProjectId != "prj-d" {
			t.Errorf("row %d: ApplicationId %q EnvironmentId %q ProjectId %v, want %q env-d prj-d", i+2, r.ApplicationId, r.EnvironmentId, r.ProjectId, wantApp)
		}
	}
}

func TestCrossCheck(t *testing.T) {
	t.Parallel()
	p := samplesheet.NewParser(testOptions(nil))
	data := `{"key":"k1","request":{` + base + `,"Name":"n1"}}` + "\n" +
		`{"key":"k1","request":{` + base + `,"Name":"n1"}}` + "\n" + // exact repeat: allowed
		`{"key":"k1","request":{` + base + `,"Name":"n2"}}` + "\n" + // same key, other request
		`{"key":"k2","request":{` + base + `,"Name":"n1"}}` + "\n" + // same Name, other key
		`{"key":"k3","request":{` + base + `,"Name":"n1","ProjectId":"prj-2"}}` + "\n" // other project: fine
	items, errs := p.Parse("x.jsonl", ".", []byte(data), samplesheet.FormatAuto)
	if len(errs) != 0 {
		t.Fatalf("parse errors: %v", errs)
	}
	ok, dupErrs := samplesheet.CrossCheck(items)
	var got []string
	for _, e := range dupErrs {
		got = append(got, e.Error())
	}
	want := []string{
		"x.jsonl:3: key: DuplicateKey: the same key was given to a different request at x.jsonl:1",
		"x.jsonl:4: Name: DuplicateName: the request at x.jsonl:1 uses the same Name in the same project; run-group names must be unique",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors\n got %q\nwant %q", got, want)
	}
	var locs []string
	for _, it := range ok {
		locs = append(locs, it.Loc.String())
	}
	if want := []string{"x.jsonl:1", "x.jsonl:2", "x.jsonl:5"}; !reflect.DeepEqual(locs, want) {
		t.Errorf("kept %v, want %v", locs, want)
	}
}

func TestDetectFormat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, data string
		want       samplesheet.Format
	}{
		{"a.json", "x", samplesheet.FormatJSON},
		{"a.JSONL", "x", samplesheet.FormatJSONL},
		{"a.ndjson", "x", samplesheet.FormatJSONL},
		{"a.csv", "{", samplesheet.FormatCSV},
		{"stdin", " [ {} ]", samplesheet.FormatJSON},
		{"stdin", "{\n \"a\": 1\n}\n", samplesheet.FormatJSON},
		{"stdin", "{}\n{}\n", samplesheet.FormatJSONL},
		{"stdin", "{", samplesheet.FormatJSONL},
		{"stdin", "Name,ApplicationId\n", samplesheet.FormatCSV},
		{"stdin", "", samplesheet.FormatJSONL},
	} {
		if got := samplesheet.DetectFormat(tc.name, []byte(tc.data)); got != tc.want {
			t.Errorf("detectFormat(%q, %q) = %s, want %s", tc.name, tc.data, got, tc.want)
		}
	}
}

func TestLimitsApply(t *testing.T) {
	t.Parallel()
	opts := testOptions(map[string]string{"big.json": `{"a":"` + strings.Repeat("x", 300) + `"}`, "small.json": `{}`})
	opts.Limits.MaxRequestBytes = 400 // base64 of a file must fit: at most 300 bytes of file
	long := strings.Repeat("长", 50)   // a Name the page sets no limit for
	_, errs := samplesheet.NewParser(opts).Parse("s.csv", ".", []byte("Name,ApplicationId,EnvironmentId,input_json\nn1,a,e,big.json\n"+long+",a,e,small.json\n"), samplesheet.FormatAuto)
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := []string{
		"s.csv:row2: input_json: InputJsonFile: the file exceeds 300 bytes",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors\n got %q\nwant %q", got, want)
	}
}

func TestMaxRequestsBoundsARun(t *testing.T) {
	opts := testOptions(nil)
	opts.MaxRequests = 2
	p := samplesheet.NewParser(opts)
	csv := "Name,ApplicationId,EnvironmentId,InputCosUri\n" +
		"a,app-1,env-1,cos://b/a.json\nb,app-1,env-1,cos://b/b.json\nc,app-1,env-1,cos://b/c.json\n"
	items, errs := p.Parse("runs.csv", ".", []byte(csv), samplesheet.FormatCSV)
	if len(items) != 2 || len(errs) != 1 || errs[0].Code != samplesheet.CodeTooMany || errs[0].Loc.Row != 4 {
		t.Fatalf("items=%d errs=%v; want 2 items and one %s error at row 4", len(items), errs, samplesheet.CodeTooMany)
	}
	// The bound spans every file of the run.
	_, errs = p.Parse("more.jsonl", ".", []byte(`{"Name":"d","ApplicationId":"app-1","EnvironmentId":"env-1","InputCosUri":"cos://b/d.json"}`+"\n"), samplesheet.FormatJSONL)
	if len(errs) != 1 || errs[0].Code != samplesheet.CodeTooMany {
		t.Fatalf("second file errs=%v; want %s", errs, samplesheet.CodeTooMany)
	}
}

func TestParseFormat(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]samplesheet.Format{"auto": samplesheet.FormatAuto, "JSON": samplesheet.FormatJSON, "jsonl": samplesheet.FormatJSONL, "Csv": samplesheet.FormatCSV} {
		if got, err := samplesheet.ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := samplesheet.ParseFormat("xml"); err == nil || err.Error() != "must be auto, json, jsonl or csv" {
		t.Errorf("ParseFormat(xml) = %v", err)
	}
}

// Validate checks a request that comes from elsewhere than a file (a
// redriven dead letter) under its own key, or derives one.
func TestValidate(t *testing.T) {
	t.Parallel()
	loc := samplesheet.Location{File: "seq=7", Index: -1}
	body := `{"Name":"n1",` + base + `}`
	r, err := samplesheet.Validate(submit.DefaultLimits(), loc, []byte(body), "k-1", true)
	if err != nil || r.Key != "k-1" || !r.KeyGiven || string(r.Body) != string(canonical(t, body)) || r.RunApplication.Name != "n1" {
		t.Fatalf("Validate = %+v, %v", r, err)
	}
	if r, _ := samplesheet.Validate(submit.DefaultLimits(), loc, []byte(body), "", false); r.Key != client.DeriveKey(r.Body) {
		t.Errorf("derived key %q does not match the body", r.Key)
	}
	_, err = samplesheet.Validate(submit.DefaultLimits(), loc, []byte(`{`+base+`,"Description":"`+secret+`"}`), "k-1", true)
	if err == nil || err.Error() != "seq=7: Name: MissingParameter: parameter is required" {
		t.Errorf("Validate of a request without Name: %v", err)
	}
	_, err = samplesheet.Validate(submit.DefaultLimits(), loc, []byte(body), "", true)
	if err == nil || err.Field != "key" || err.Code != samplesheet.CodeInvalidKey {
		t.Errorf("Validate under an empty key: %#v", err)
	}
}
