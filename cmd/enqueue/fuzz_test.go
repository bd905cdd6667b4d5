package main

import (
	"encoding/json"
	"github.com/omicsq/omicsq/client"
	"testing"

	"github.com/omicsq/omicsq/internal/submit"
)

// checkParse runs the parser on arbitrary input and checks its invariants:
// it never panics; every item is a canonical, valid request under a valid
// key (derived from the body when none was given); every error names the
// file and a reason; and every input yields an item or an error.
func checkParse(t *testing.T, name string, data []byte, f format) {
	p := newTestParser(map[string]string{"in.json": `{"wf.sample":"S1"}`, "bad.json": "not json"})
	items, errs := p.parse(name, ".", data, f)
	if len(items) == 0 && len(errs) == 0 {
		t.Fatal("neither an item nor an error")
	}
	for _, it := range items {
		req, err := submit.DecodeRunApplication(it.Body, p.lim)
		if err != nil {
			t.Fatalf("%s: published body fails validation: %v", it.Loc, err)
		}
		again, err := json.Marshal(req)
		if err != nil || string(again) != string(it.Body) {
			t.Fatalf("%s: body is not canonical:\n%s\n%s", it.Loc, it.Body, again)
		}
		if err := client.ValidateKey(it.Key); err != nil {
			t.Fatalf("%s: invalid key: %v", it.Loc, err)
		}
		if !it.KeyGiven && it.Key != client.DeriveKey(it.Body) {
			t.Fatalf("%s: derived key %q does not match the body", it.Loc, it.Key)
		}
		if it.Loc.File != name {
			t.Fatalf("item location %q does not name the file", it.Loc)
		}
	}
	for _, e := range errs {
		if e.Reason == "" || e.Loc.File != name {
			t.Fatalf("error without file or reason: %#v", e)
		}
	}
	crossCheck(items)
}

func FuzzParseJSON(f *testing.F) {
	f.Add([]byte(`{` + base + `,"Name":"n"}`))
	f.Add([]byte(`[{"key":"k","request":{` + base + `,"Name":"n"}}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.json", data, formatJSON)
		checkParse(t, "stdin", data, formatAuto)
	})
}

func FuzzParseJSONL(f *testing.F) {
	f.Add([]byte(`{` + base + `,"Name":"n"}` + "\n\n" + `{"key":"k","request":{` + base + `,"Name":"m"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.jsonl", data, formatJSONL)
	})
}

func FuzzParseCSV(f *testing.F) {
	f.Add([]byte("key,Name,ApplicationId,EnvironmentId,input_json,UseCallCache\nk,n,a,e,in.json,true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParse(t, "fuzz.csv", data, formatCSV)
	})
}
