package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// corpusDir holds the RunApplication corpus (testdata/runapplication/README.md).
const corpusDir = "../testdata/runapplication"

// Minimum corpus sizes the corpus promises.
const (
	minAllowedBodies   = 45
	minForbiddenBodies = 20
)

type corpusBody struct {
	name string // file name without .json
	body []byte
}

func readCorpus(t *testing.T, dir string) []corpusBody {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(corpusDir, dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]corpusBody, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, corpusBody{strings.TrimSuffix(filepath.Base(p), ".json"), b})
	}
	return out
}

// corpusWant is the expectation of a forbidden body.
type corpusWant struct{ code, field string }

func readWant(t *testing.T, name string) corpusWant {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, "forbidden", name+".want"))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	line := strings.TrimSuffix(string(b), "\n")
	parts := strings.Fields(line)
	if len(parts) != 2 || strings.Contains(line, "\n") || line != parts[0]+" "+parts[1] {
		t.Fatalf("%s.want: %q is not one line CODE FIELD", name, b)
	}
	return corpusWant{parts[0], parts[1]}
}

// TestCorpusLayout: the corpus has the promised size, every forbidden body
// has a well-formed .want naming a code the API documents, and no file is
// stray.
func TestCorpusLayout(t *testing.T) {
	t.Parallel()
	if n := len(readCorpus(t, "allowed")); n < minAllowedBodies {
		t.Errorf("%d allowed bodies, want at least %d", n, minAllowedBodies)
	}
	forbidden := readCorpus(t, "forbidden")
	if n := len(forbidden); n < minForbiddenBodies {
		t.Errorf("%d forbidden bodies, want at least %d", n, minForbiddenBodies)
	}
	documented := map[string]bool{
		codeMissingParameter: true, codeInvalidParameter: true, codeInvalidParameterValue: true, codeUnknownParameter: true,
		codeInvalidBase64Encode: true, codeInvalidInputJSONFormat: true, codeInvalidRunOption: true,
		codeInvalidTimeoutMinutes: true, codeRequestSizeLimitExceeded: true,
	}
	for _, fb := range forbidden {
		w := readWant(t, fb.name)
		if !documented[w.code] {
			t.Errorf("%s.want: code %q is not a RunApplication validation code", fb.name, w.code)
		}
	}
	for _, dir := range []string{"allowed", "forbidden"} {
		entries, err := os.ReadDir(filepath.Join(corpusDir, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			name := e.Name()
			switch {
			case strings.HasSuffix(name, ".json"):
			case dir == "forbidden" && strings.HasSuffix(name, ".want"):
				if _, err := os.Stat(filepath.Join(corpusDir, dir, strings.TrimSuffix(name, ".want")+".json")); err != nil {
					t.Errorf("%s/%s has no body", dir, name)
				}
			default:
				t.Errorf("%s/%s: not a corpus file", dir, name)
			}
		}
	}
}

// TestCorpusAllowed: every allowed body is accepted over real HTTP and
// creates one run group, both sent byte for byte (the package's signer)
// and through the Tencent SDK's generic client, which re-encodes the body
// before signing it.
func TestCorpusAllowed(t *testing.T) {
	t.Parallel()
	for _, cb := range readCorpus(t, "allowed") {
		t.Run(cb.name, func(t *testing.T) {
			t.Parallel()
			var fields struct {
				Name, ProjectId, InputCosUri string
				NFOption                     any
			}
			if err := json.Unmarshal(cb.body, &fields); err != nil {
				t.Fatalf("an allowed body must be JSON: %v", err)
			}
			wantProject := fields.ProjectId
			if wantProject == "" {
				wantProject = DefaultProjectID
			}
			check := func(t *testing.T, s *Server, code, msg, runGroupID string) {
				t.Helper()
				if code != "" {
					t.Fatalf("refused: %s: %s", code, msg)
				}
				groups := s.RunGroups()
				if len(groups) != 1 || groups[0].RunGroupId != runGroupID || runGroupID == "" {
					t.Fatalf("answer RunGroupId %q, stored groups %d; want one group with that ID", runGroupID, len(groups))
				}
				g := groups[0]
				wantInput, wantType := "JSON", "WDL"
				if fields.InputCosUri != "" {
					wantInput = "COS"
				}
				if fields.NFOption != nil {
					wantType = "NEXTFLOW"
				}
				if g.Name != fields.Name || g.ProjectId != wantProject || g.InputType != wantInput || g.Type != wantType {
					t.Errorf("stored Name/ProjectId/InputType/Type do not reflect the body: %q %q %q %q",
						g.Name, g.ProjectId, g.InputType, g.Type)
				}
			}

			t.Run("raw", func(t *testing.T) {
				s, l := startSandbox(t, Options{})
				a := send(t, rawRequest{body: cb.body}.build(t, "http://"+l.Addr()+"/"))
				msg := ""
				if a.Response.Error != nil {
					msg = a.Response.Error.Message
				}
				check(t, s, answerCode(a), msg, a.Response.RunGroupId)
			})
			t.Run("sdk", func(t *testing.T) {
				s, l := startSandbox(t, Options{})
				resp, err := sdkCall(t, l.Addr(), defaultCred(), actionRunApplication, string(cb.body), sdkOptions{region: testRegion})
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				var a apiAnswer
				if err := json.Unmarshal(resp, &a); err != nil {
					t.Fatalf("decode answer: %v", err)
				}
				check(t, s, "", "", a.Response.RunGroupId)
			})
		})
	}
}

var corpusNameValue = regexp.MustCompile(`"Name"\s*:\s*"([^"\\]{3,})"`)

// TestCorpusForbidden: every forbidden body is refused with the code of
// its .want file and a message naming the field, creates nothing, and is
// not echoed in the message.
func TestCorpusForbidden(t *testing.T) {
	t.Parallel()
	for _, cb := range readCorpus(t, "forbidden") {
		want := readWant(t, cb.name)
		t.Run(cb.name, func(t *testing.T) {
			t.Parallel()
			s, l := startSandbox(t, Options{})
			a := send(t, rawRequest{body: cb.body}.build(t, "http://"+l.Addr()+"/"))
			if got := answerCode(a); got != want.code {
				msg := ""
				if a.Response.Error != nil {
					msg = a.Response.Error.Message
				}
				t.Fatalf("code = %q (%s), want %q", got, msg, want.code)
			}
			msg := a.Response.Error.Message
			if want.field != "-" && !strings.Contains(msg, want.field+":") {
				t.Errorf("message %q does not name %s", msg, want.field)
			}
			for _, m := range corpusNameValue.FindAllSubmatch(cb.body, -1) {
				if strings.Contains(msg, string(m[1])) {
					t.Errorf("message %q echoes the Name value", msg)
				}
			}
			if n := len(s.RunGroups()); n != 0 {
				t.Errorf("%d run groups created, want 0", n)
			}
			// The decoder alone answers the same (no known-resource sets).
			if _, e := decodeRunApplication(cb.body); e == nil || e.Code != want.code {
				t.Errorf("decodeRunApplication = %v, want code %s", e, want.code)
			}
		})
	}
}
