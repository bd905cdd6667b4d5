package samplesheet_test

import (
	"strings"
	"testing"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/samplesheet"
)

// The priority and fairness_key columns (CSV) and envelope fields (JSON)
// set a request's lane; a bad one is an error naming its row, never its
// value.
func TestLaneColumnsAndFields(t *testing.T) {
	t.Parallel()
	csv := "Name,ApplicationId,EnvironmentId,InputCosUri,priority,fairness_key\n" +
		"n1,app,env,cos://b/x.json,urgent,lab-a\n" +
		"n2,app,env,cos://b/y.json,,\n" +
		"n3,app,env,cos://b/z.json,ROUTINE,\n"
	items, errs := samplesheet.NewParser(testOptions(nil)).Parse("s.csv", ".", []byte(csv), samplesheet.FormatAuto)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := []struct {
		p  client.Priority
		fk string
	}{{client.PriorityUrgent, "lab-a"}, {"", ""}, {client.PriorityRoutine, ""}}
	for i, w := range want {
		if items[i].Priority != w.p || items[i].FairnessKey != w.fk {
			t.Errorf("row %d: priority %q fairness key %q, want %q %q", i+2, items[i].Priority, items[i].FairnessKey, w.p, w.fk)
		}
	}
	bad := "Name,ApplicationId,EnvironmentId,InputCosUri,priority\nn1,app,env,cos://b/x.json,routine\nn2,app,env,cos://b/y.json," + secret + "\n"
	_, errs = samplesheet.NewParser(testOptions(nil)).Parse("s.csv", ".", []byte(bad), samplesheet.FormatAuto)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "row3") || !strings.Contains(errs[0].Error(), "priority") || strings.Contains(errs[0].Error(), secret) {
		t.Fatalf("errors = %v; want one naming row3 and the priority column, without the value", errs)
	}

	jsonl := `{"key":"k1","priority":"normal","fairness_key":"cust-1","request":{"Name":"j1",` + base + `}}` + "\n" +
		`{"key":"k2","priority":"` + secret + `","request":{"Name":"j2",` + base + `}}` + "\n"
	items, errs = samplesheet.NewParser(testOptions(nil)).Parse("s.jsonl", ".", []byte(jsonl), samplesheet.FormatAuto)
	if len(items) != 1 || items[0].Priority != client.PriorityNormal || items[0].FairnessKey != "cust-1" {
		t.Fatalf("items = %+v", items)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "s.jsonl:2:") || strings.Contains(errs[0].Error(), secret) {
		t.Fatalf("errors = %v; want one naming line 2, without the value", errs)
	}
}
