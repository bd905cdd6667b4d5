package main

import (
	"testing"

	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/submit"
)

// The parsing itself is tested in internal/samplesheet; these helpers build
// and compare the requests the command's tests publish.

// base is the fields every valid request here shares but Name.
const base = `"ApplicationId":"app-1","EnvironmentId":"env-1","InputBase64":"e30K"`

// canonical is body as enqueue publishes it.
func canonical(t *testing.T, body string) []byte {
	t.Helper()
	r, err := samplesheet.Validate(submit.DefaultLimits(), samplesheet.Location{File: "test", Index: -1}, []byte(body), "", false)
	if err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return r.Body
}
