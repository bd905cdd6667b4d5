package sandbox

import (
	"encoding/base64"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSandboxIsIndependentOfTheClient: the sandbox's validation and wire
// types are its own. Its non-test files import no omicsq package (so no
// exported signature can name a client type either) and name none of the
// client's validation entry points.
func TestSandboxIsIndependentOfTheClient(t *testing.T) {
	t.Parallel()
	banned := []string{"submit.DecodeRunApplication", "submit.Validate", "submit.Limits", "submit.ValidationError"}
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		checked++
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range banned {
			if strings.Contains(string(src), b) {
				t.Errorf("%s mentions %s", p, b)
			}
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(path, "github.com/omicsq/") {
				t.Errorf("%s imports %s; the sandbox must not depend on the client it tests", p, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no non-test files found")
	}
}

// TestDecodeRunApplication covers the decoder's rules one by one; the
// corpus (TestCorpusAllowed, TestCorpusForbidden) covers them over HTTP.
func TestDecodeRunApplication(t *testing.T) {
	t.Parallel()
	const head = `"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1"`
	decode := func(t *testing.T, rest string) *runApplicationRequest {
		t.Helper()
		r, e := decodeRunApplication([]byte(`{` + head + rest + `}`))
		if e != nil {
			t.Fatalf("refused: %s: %s", e.Code, e.Message)
		}
		return r
	}
	refuse := func(t *testing.T, body, code, field string) {
		t.Helper()
		_, e := decodeRunApplication([]byte(body))
		if e == nil {
			t.Fatalf("accepted, want %s", code)
		}
		if e.Code != code || field != "" && !strings.HasPrefix(e.Message, field+":") {
			t.Fatalf("%s: %s; want %s naming %s", e.Code, e.Message, code, field)
		}
	}

	t.Run("blank optional strings are absent", func(t *testing.T) {
		r := decode(t, `,"InputBase64":"e30K","ProjectId":"","Description":"","InputCosUri":"","TableId":"",`+
			`"ApplicationVersionId":"","WorkDir":"","AccessMode":"","Option":{"FailureMode":"","FinalWorkflowOutputsDir":""},`+
			`"NFOption":{"Config":"","Profile":"","NFVersion":"","LaunchDir":""}`)
		for name, p := range map[string]*string{"ProjectId": r.ProjectId, "Description": r.Description, "InputCosUri": r.InputCosUri,
			"TableId": r.TableId, "ApplicationVersionId": r.ApplicationVersionId, "WorkDir": r.WorkDir, "AccessMode": r.AccessMode,
			"Option.FailureMode": r.Option.FailureMode, "Option.FinalWorkflowOutputsDir": r.Option.FinalWorkflowOutputsDir,
			"NFOption.Config": r.NFOption.Config, "NFOption.Profile": r.NFOption.Profile,
			"NFOption.NFVersion": r.NFOption.NFVersion, "NFOption.LaunchDir": r.NFOption.LaunchDir} {
			if p != nil {
				t.Errorf("%s = %q, want absent", name, *p)
			}
		}
		if r.NFOption == nil || r.Option == nil {
			t.Error("an object of blanks is still given (it selects Nextflow)")
		}
	})

	t.Run("null is absent", func(t *testing.T) {
		r := decode(t, `,"InputBase64":"e30K","ProjectId":null,"TableRowUuids":null,"CacheClearDelay":null,"Option":null,`+
			`"NFOption":null,"ResultNotification":null,"InputCosUri":null`)
		if r.ProjectId != nil || r.TableRowUuids != nil || r.CacheClearDelay != nil || r.Option != nil || r.NFOption != nil ||
			r.ResultNotification != nil || r.InputCosUri != nil {
			t.Errorf("null fields were kept: %+v", r)
		}
		refuse(t, `{"ApplicationId":"app-1","Name":null,"EnvironmentId":"env-1","InputBase64":"e30K"}`, codeMissingParameter, "Name")
	})

	t.Run("fields decode", func(t *testing.T) {
		r := decode(t, `,"InputBase64":"eyJhIjoxfQ==","TableRowUuids":["r1","r2"],"CacheClearDelay":24.0,`+
			`"Option":{"UseCallCache":false},"TimeoutNotificationMinutes":5,"EmailForNotification":["not checked"]`)
		if string(r.input) != `{"a":1}` || len(r.TableRowUuids) != 2 || *r.CacheClearDelay != 24 ||
			*r.Option.UseCallCache != false || *r.TimeoutNotificationMinutes != 5 || len(r.EmailForNotification) != 1 {
			t.Errorf("decoded %+v", r)
		}
	})

	t.Run("base64", func(t *testing.T) {
		doc := `{"wf.sample":"S001","wf.reference":"GRCh38","wf.flags":[true,false]}`
		enc := base64.StdEncoding.EncodeToString([]byte(doc))
		for name, v := range map[string]string{
			"padded":     enc,
			"unpadded":   strings.TrimRight(enc, "="),
			"wrapped lf": enc[:20] + `\n` + enc[20:40] + `\n` + enc[40:] + `\n`,
			"crlf":       enc[:16] + `\r\n` + enc[16:],
			"spaces":     " " + enc[:8] + ` \t` + enc[8:] + " ",
		} {
			if r := decode(t, `,"InputBase64":"`+v+`"`); string(r.input) != doc {
				t.Errorf("%s: decoded %q", name, r.input)
			}
		}
		for name, v := range map[string]string{
			"url alphabet":  strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString([]byte("{\"q\":\"??>>\"}"))),
			"inner padding": "e30=e30=",
			"one char":      "e",
			"bad char":      "e30K*",
		} {
			t.Run(name, func(t *testing.T) {
				refuse(t, `{`+head+`,"InputBase64":"`+v+`"}`, codeInvalidBase64Encode, "InputBase64")
			})
		}
		refuse(t, `{`+head+`,"InputBase64":" \n "}`, codeInvalidInputJSONFormat, "InputBase64")
		refuse(t, `{`+head+`,"InputBase64":"`+base64.StdEncoding.EncodeToString([]byte("{"))+`"}`, codeInvalidInputJSONFormat, "InputBase64")
	})

	t.Run("no length or character rules", func(t *testing.T) {
		long := strings.Repeat("名", 5000)
		decode(t, `,"InputBase64":"e30K","Description":"`+long+`","WorkDir":"relative/dir","VolumeIds":["`+long+`"],`+
			`"NFOption":{"Profile":"docker, test","NFVersion":"99.1"},"InputCosUri":""`)
		decode(t, `,"InputCosUri":"http://example.com/not-cos"`)
		if r := decode(t, `,"InputCosUri":"https://b-1250000000.cos.ap-guangzhou.myqcloud.com/x.json","WorkDir":"https://b/work"`); r.InputCosUri == nil {
			t.Error("InputCosUri lost")
		}
	})

	t.Run("structure", func(t *testing.T) {
		refuse(t, ``, codeInvalidParameter, "")
		refuse(t, `null`, codeInvalidParameter, "")
		refuse(t, `{`+head+`,"InputBase64":"e30K"} {}`, codeInvalidParameter, "")
		refuse(t, `{`+head+`,"InputBase64":"e30K"}]`, codeInvalidParameter, "")
		refuse(t, `{`+head+`,"InputBase64":"e30K","Option":{"FailureMode":"NoNewCalls","Extra":1}}`, codeUnknownParameter, "Option")
		refuse(t, `{`+head+`,"InputBase64":"e30K","NFOption":{"Resume":true,"Resume":false}}`, codeInvalidParameter, "NFOption.Resume")
		refuse(t, `{`+head+`,"InputBase64":"e30K","NFOption":[]}`, codeInvalidParameter, "NFOption")
		refuse(t, `{`+head+`,"InputBase64":"e30K","VolumeIds":[null]}`, codeInvalidParameter, "VolumeIds")
		refuse(t, `{`+head+`,"InputBase64":"e30K","EmailForNotification":{}}`, codeInvalidParameter, "EmailForNotification")
		refuse(t, `{`+head+`,"InputBase64":"e30K","TimeoutNotification":"true"}`, codeInvalidParameter, "TimeoutNotification")
		refuse(t, `{`+head+`,"InputBase64":"e30K","TimeoutNotificationMinutes":60.5}`, codeInvalidParameter, "TimeoutNotificationMinutes")
		refuse(t, `{`+head+`,"InputBase64":"e30K","Unknown":1}`, codeUnknownParameter, "")
	})

	t.Run("WorkDir on COS needs LaunchDir", func(t *testing.T) {
		refuse(t, `{`+head+`,"InputBase64":"e30K","WorkDir":"cos://b/work"}`, codeMissingParameter, "NFOption.LaunchDir")
		refuse(t, `{`+head+`,"InputBase64":"e30K","WorkDir":"cos://b/work","NFOption":{"LaunchDir":""}}`, codeMissingParameter, "NFOption.LaunchDir")
		decode(t, `,"InputBase64":"e30K","WorkDir":"cos://b/work","NFOption":{"LaunchDir":"/mnt/v/launch"}`)
	})
}

func TestIntegralValue(t *testing.T) {
	t.Parallel()
	ok := map[string]uint64{
		"0": 0, "-0": 0, "0.0": 0, "0e5": 0, "24": 24, "24.0": 24, "24.000": 24, "2.4e1": 24, "2.4E+1": 24, "240e-1": 24,
		"1e2": 100, "100e-2": 1, "18446744073709551615": 1<<64 - 1, "1.8446744073709551615e19": 1<<64 - 1,
		"0.0e-999999999999": 0, "1e0000000000000002": 100,
	}
	for s, want := range ok {
		if got, valid := integralValue(s); !valid || got != want {
			t.Errorf("integralValue(%s) = %d, %v; want %d", s, got, valid, want)
		}
	}
	for _, s := range []string{"-1", "-24.0", "1.5", "0.1", "24.5e0", "2.45e1", "1e-1", "18446744073709551616", "1e20",
		"1e999999999", "1e-999999999", `"24"`, "true", "[]", "{}", ""} {
		if got, valid := integralValue(s); valid {
			t.Errorf("integralValue(%s) = %d, accepted; want refused", s, got)
		}
	}
}

// FuzzDecodeRunApplication: the decoder never panics, and an accepted body
// has its required fields and one input.
func FuzzDecodeRunApplication(f *testing.F) {
	for _, s := range []string{
		`{"ApplicationId":"a","Name":"n","EnvironmentId":"e","InputBase64":"e30K"}`,
		`{"ApplicationId":"a","Name":"n","EnvironmentId":"e","InputCosUri":"cos://b/k","CacheClearDelay":2.4e1}`,
		`{"ApplicationId":"a","Name":"n","EnvironmentId":"e","InputBase64":"e30K","Option":{"FailureMode":"NoNewCalls"},"NFOption":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := decodeRunApplication(body)
		if e != nil {
			if r != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("error %+v with request %v", e, r)
			}
			return
		}
		if r.ApplicationId == "" || r.Name == "" || r.EnvironmentId == "" || (r.InputBase64 == nil) == (r.InputCosUri == nil) {
			t.Fatalf("accepted an incomplete request: %+v", r)
		}
	})
}
