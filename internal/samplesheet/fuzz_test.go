package samplesheet_test

import (
	"encoding/json"
	"testing"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

// checkParse runs the parser on arbitrary input and checks its invariants:
// it never panics; every request is canonical and valid under a valid key
// (derived from the body when none was given); every error names the file
// and a reason; and every input yields a request or an error.
func checkParse(t *testing.T, name string, data []byte, f samplesheet.Format) {
	opts := testOptions(map[string]string{"in.json": `{"wf.sample":"S1"}`, "bad.json": "not json"})
	reqs, errs := samplesheet.NewParser(opts).Parse(name, ".", data, f)
	if len(reqs) == 0 && len(errs) == 0 {
		t.Fatal("neither a request nor an error")
	}
	for _, r := range reqs {
		decoded, err := submit.DecodeRunApplication(r.Body, opts.Limits)
		if err != nil {
			t.Fatalf("%s: published body fails validation: %v", r.Loc, err)
		}
		again, err := json.Marshal(decoded)
		if err != nil || string(again) != string(r.Body) {
			t.Fatalf("%s: body is not canonical:\n%s\n%s", r.Loc, r.Body, again)
		}
		if err := client.ValidateKey(r.Key); err != nil {
			t.Fatalf("%s: invalid key: %v", r.Loc, err)
		}
		if !r.KeyGiven && r.Key != client.DeriveKey(r.Body) {
			t.Fatalf("%s: derived key %q does not match the body", r.Loc, r.Key)
		}
		if r.Loc.File != name {
			t.Fatalf("request location %q does not name the file", r.Loc)
		}
	}
	for _, e := range errs {
		if e.Reason == "" || e.Loc.File != name {
			t.Fatalf("error without file or reason: %#v", e)
		}
	}
	samplesheet.CrossCheck(reqs)
}

func FuzzParseJSON(f *testing.F) {
	f.Add([]byte(`{` + base + `,"Name":"n"}`))
	f.Add([]byte(`[{"key":"k","request":{` + base + `,"Name":"n"}}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.json", data, samplesheet.FormatJSON)
		checkParse(t, "stdin", data, samplesheet.FormatAuto)
	})
}

func FuzzParseJSONL(f *testing.F) {
	f.Add([]byte(`{` + base + `,"Name":"n"}` + "\n\n" + `{"key":"k","request":{` + base + `,"Name":"m"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.jsonl", data, samplesheet.FormatJSONL)
	})
}

func FuzzParseCSV(f *testing.F) {
	f.Add([]byte("key,Name,ApplicationId,EnvironmentId,input_json,UseCallCache\nk,n,a,e,in.json,true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.csv", data, samplesheet.FormatCSV)
	})
}
