package redrive

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestParseEditAndApply(t *testing.T) {
	t.Parallel()
	req := json.RawMessage(`{"Name":"n","Option":{"FailureMode":"Bad","UseCallCache":true},"Extra":1,"AccessMode":"PUBLIC"}`)
	var edits []Edit
	for _, s := range []string{"Option.FailureMode=NoNewCalls", `Name="007"`, "CacheClearDelay=24", "Extra=null",
		"AccessMode=null", "NFOption.Resume=true", "Description=two words", "Option.UseCallCache=null"} {
		e, err := ParseEdit(s)
		if err != nil {
			t.Fatalf("ParseEdit(%q): %v", s, err)
		}
		edits = append(edits, e)
	}
	out, err := Apply(req, edits)
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	_ = json.Unmarshal(out, &got)
	_ = json.Unmarshal([]byte(`{"Name":"007","Option":{"FailureMode":"NoNewCalls"},"CacheClearDelay":24,"NFOption":{"Resume":true},"Description":"two words"}`), &want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Apply = %s", out)
	}
	for _, bad := range []string{"Nmae=x", "=x", "noequals", "Option.Nope=1", "Unknown.Field=null"} {
		if _, err := ParseEdit(bad); err == nil {
			t.Errorf("ParseEdit(%q) accepted", bad)
		}
	}
	if out, _ := Apply(req, nil); string(out) != string(req) {
		t.Errorf("no edits changed the request: %s", out)
	}
	if _, err := Apply(json.RawMessage(`[1]`), edits); err == nil {
		t.Error("Apply on a non-object succeeded")
	}
}
