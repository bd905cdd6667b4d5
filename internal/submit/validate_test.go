package submit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// marker appears in every offending value below, so a test can tell when an
// error string echoes a value instead of naming the field.
const marker = "PATIENT-4711"

// singletonWith returns the singleton seed body with edits applied: a nil
// value deletes the key, "Option.X" edits a nested key.
func singletonWith(t *testing.T, edits map[string]any) []byte {
	t.Helper()
	m := decodeMap(t, readSeed(t, "seed_singleton.json"))
	for k, v := range edits {
		obj := m
		if parent, child, nested := strings.Cut(k, "."); nested {
			sub, _ := obj[parent].(map[string]any)
			if sub == nil {
				sub = map[string]any{}
				obj[parent] = sub
			}
			obj, k = sub, child
		}
		if v == nil {
			delete(obj, k)
		} else {
			obj[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func strs(n int, prefix string) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = prefix + string(rune('a'+i%26))
	}
	return out
}

func TestDecodeRunApplication(t *testing.T) {
	t.Parallel()
	type tc struct {
		name      string
		body      []byte
		lim       Limits
		wantCode  string // "" means accepted
		wantField string
	}
	raw := func(s string) []byte { return []byte(s) }
	edit := func(e map[string]any) []byte { return singletonWith(t, e) }
	cases := []tc{
		{name: "seed singleton", body: readSeed(t, "seed_singleton.json")},
		{name: "seed batch with combining dot in TableId", body: readSeed(t, "seed_batch.json")},
		{name: "every optional field", body: edit(map[string]any{
			"InputBase64": nil, "InputCosUri": "cos://bucket-1250000000/in/input.json",
			"ApplicationVersionId": "appver-1", "WorkDir": "cos://bucket/work", "AccessMode": "PUBLIC",
			"VolumeIds": []any{"vol-1", "vol-2"}, "ResultNotification": true, "TimeoutNotification": false,
			"TimeoutNotificationMinutes": 2880, "EmailForNotification": []any{"ops@example.com", "a.b+c@sub.example.org"},
			"Option.FinalWorkflowOutputsDir": "cos://bucket/out dir/", "Option.UseRelativeOutputPaths": false,
			"Option.AddRunInfoToOutputDir": true, "Option.FailureMode": "ContinueWhilePossible",
			"NFOption.Config": "process {\n\texecutor = 'k8s'\r\n}", "NFOption.Profile": "docker,test",
			"NFOption.Report": true, "NFOption.Resume": false, "NFOption.NFVersion": "23.10.1",
			"NFOption.LaunchDir": "/mnt/vol/launch",
		})},
		{name: "timeout minutes lower bound", body: edit(map[string]any{"TimeoutNotificationMinutes": 5})},
		{name: "null fields are absent", body: edit(map[string]any{"ProjectId": json.RawMessage("null"), "Option": json.RawMessage("null")})},
		{name: "unicode name and description", body: edit(map[string]any{"Name": "样本批次 ä 01", "Description": "全基因组 – run"})},

		// Accepted because neither the page nor JSON forbids them (a lab's
		// exporter writes "" for blanks; the API decides the rest).
		{name: "blank optional fields", body: edit(map[string]any{"ProjectId": "", "TableId": "", "ApplicationVersionId": "",
			"WorkDir": "", "AccessMode": "", "InputCosUri": "", "Description": "", "Option.FailureMode": "", "NFOption.Profile": ""})},
		{name: "description with newlines over 1 KiB", body: edit(map[string]any{"Description": "line\n" + strings.Repeat("d", 2000) + "\r\n\tend"})},
		{name: "50-character Chinese name", body: edit(map[string]any{"Name": strings.Repeat("样", 50)})},
		{name: "11 e-mail addresses", body: edit(map[string]any{"EmailForNotification": strs(11, "ops@example.com")})},
		{name: "e-mail the API may judge", body: edit(map[string]any{"EmailForNotification": []any{"Ops <ops@example.com>"}})},
		{name: "nextflow profile list", body: edit(map[string]any{"NFOption.Profile": "docker, test"})},
		{name: "1,001 table rows", body: edit(map[string]any{"TableId": "tab-1", "TableRowUuids": strs(1001, "row-")})},
		{name: "rows without a table", body: edit(map[string]any{"TableRowUuids": []any{"row-1"}})},
		{name: "cache clear delay 24.0", body: raw(strings.Replace(string(readSeed(t, "seed_singleton.json")), `"CacheClearDelay": 0`, `"CacheClearDelay": 24.0`, 1))},
		{name: "https COS URL", body: edit(map[string]any{"InputBase64": nil, "InputCosUri": "https://bucket-1250000000.cos.ap-guangzhou.myqcloud.com/in.json"})},
		{name: "minus zero", body: raw(strings.Replace(string(readSeed(t, "seed_singleton.json")), `"CacheClearDelay": 0`, `"CacheClearDelay": -0`, 1))},
		{name: "rewritten integer, then trailing data", body: raw(strings.Replace(string(readSeed(t, "seed_singleton.json")), `"CacheClearDelay": 0`, `"CacheClearDelay": 24.0`, 1) + ` {"x":1}`),
			wantCode: CodeInvalidParameter},
		{name: "almost an integer", body: raw(strings.Replace(string(readSeed(t, "seed_singleton.json")), `"CacheClearDelay": 0`, `"CacheClearDelay": 24.000000000000000000001`, 1)),
			wantCode: CodeInvalidParameter, wantField: "CacheClearDelay"},
		{name: "a huge exponent is refused, not expanded", body: raw(strings.Replace(string(readSeed(t, "seed_singleton.json")), `"CacheClearDelay": 0`, `"CacheClearDelay": 1e100000000`, 1)),
			wantCode: CodeInvalidParameter, wantField: "CacheClearDelay"},
		{name: "non-ASCII space in base64", body: edit(map[string]any{"InputBase64": "e30\u00a0"}), wantCode: CodeInvalidBase64Encode, wantField: "InputBase64"},
		{name: "input of another encoding", body: edit(map[string]any{"InputBase64": b64("\"\xff\"")})},
		{name: "wrapped base64", body: edit(map[string]any{"InputBase64": "eyJzYW1wbGUi\nOiJTLTEifQ==\n"})},
		{name: "long IDs with spaces", body: edit(map[string]any{"ApplicationId": "app " + strings.Repeat("a", 200), "VolumeIds": []any{""}})},
		{name: "nextflow config of any size", body: edit(map[string]any{"NFOption.Config": strings.Repeat("c", 70<<10)})},

		{name: "oversize body", body: readSeed(t, "seed_singleton.json"), lim: Limits{MaxRequestBytes: 100}, wantCode: CodeRequestSizeLimitExceeded},
		{name: "invalid UTF-8", body: raw(`{"Name":"` + marker + "\xff" + `"}`), wantCode: CodeInvalidParameter},
		{name: "array body", body: raw(`["` + marker + `"]`), wantCode: CodeInvalidParameter},
		{name: "string body", body: raw(`"` + marker + `"`), wantCode: CodeInvalidParameter},
		{name: "null body", body: raw(`null`), wantCode: CodeInvalidParameter},
		{name: "empty body", body: raw(``), wantCode: CodeInvalidParameter},
		{name: "truncated JSON", body: raw(`{"Name":"` + marker + `"`), wantCode: CodeInvalidParameter},
		{name: "bad syntax in a value", body: raw(`{"Name":` + marker + `}`), wantCode: CodeInvalidParameter, wantField: "Name"},
		{name: "trailing data", body: append(readSeed(t, "seed_singleton.json"), raw(` {"x":"`+marker+`"}`)...), wantCode: CodeInvalidParameter},
		{name: "trailing garbage", body: append(readSeed(t, "seed_singleton.json"), raw(marker)...), wantCode: CodeInvalidParameter},
		{name: "unknown key", body: edit(map[string]any{"PatientName": marker}), wantCode: CodeUnknownParameter, wantField: "PatientName"},
		{name: "key in wrong case", body: edit(map[string]any{"Name": nil, "name": marker}), wantCode: CodeUnknownParameter, wantField: "name"},
		{name: "unknown nested key", body: edit(map[string]any{"Option.Retries": marker}), wantCode: CodeUnknownParameter, wantField: "Option.Retries"},
		{name: "unknown NFOption key", body: edit(map[string]any{"NFOption.Params": marker}), wantCode: CodeUnknownParameter, wantField: "NFOption.Params"},
		{name: "duplicate key", body: bytes.Replace(readSeed(t, "seed_singleton.json"), raw(`"Name": "test",`), raw(`"Name": "test", "Name": "`+marker+`",`), 1),
			wantCode: CodeInvalidParameter, wantField: "Name"},
		{name: "name of wrong type", body: edit(map[string]any{"Name": 4711}), wantCode: CodeInvalidParameter, wantField: "Name"},
		{name: "negative CacheClearDelay", body: edit(map[string]any{"CacheClearDelay": -4711}), wantCode: CodeInvalidParameter, wantField: "CacheClearDelay"},
		{name: "fractional CacheClearDelay", body: edit(map[string]any{"CacheClearDelay": 1.5}), wantCode: CodeInvalidParameter, wantField: "CacheClearDelay"},
		{name: "bool of wrong type", body: edit(map[string]any{"Option.UseCallCache": marker}), wantCode: CodeInvalidParameter, wantField: "Option.UseCallCache"},
		{name: "option of wrong type", body: edit(map[string]any{"Option": marker}), wantCode: CodeInvalidParameter, wantField: "Option"},
		{name: "list element of wrong type", body: edit(map[string]any{"TableId": "tab-1", "TableRowUuids": []any{"r-1", 4711}}), wantCode: CodeInvalidParameter, wantField: "TableRowUuids"},

		{name: "missing ApplicationId", body: edit(map[string]any{"ApplicationId": nil}), wantCode: CodeMissingParameter, wantField: "ApplicationId"},
		{name: "empty Name", body: edit(map[string]any{"Name": ""}), wantCode: CodeMissingParameter, wantField: "Name"},
		{name: "missing EnvironmentId", body: edit(map[string]any{"EnvironmentId": nil}), wantCode: CodeMissingParameter, wantField: "EnvironmentId"},
		{name: "no input", body: edit(map[string]any{"InputBase64": nil}), wantCode: CodeMissingParameter, wantField: "InputBase64"},
		{name: "both inputs", body: edit(map[string]any{"InputCosUri": "cos://b/" + marker}), wantCode: CodeInvalidParameter, wantField: "InputCosUri"},
		{name: "input not base64", body: edit(map[string]any{"InputBase64": marker + "!"}), wantCode: CodeInvalidBase64Encode, wantField: "InputBase64"},
		{name: "input base64 without padding", body: edit(map[string]any{"InputBase64": "e30"})},
		{name: "input not JSON", body: edit(map[string]any{"InputBase64": b64(`{"sample":"` + marker + `"`)}), wantCode: CodeInvalidInputJSONFormat, wantField: "InputBase64"},
		{name: "input empty is no input", body: edit(map[string]any{"InputBase64": ""}), wantCode: CodeMissingParameter, wantField: "InputBase64"},
		{name: "failure mode", body: edit(map[string]any{"Option.FailureMode": marker}), wantCode: CodeInvalidRunOption, wantField: "Option.FailureMode"},
		{name: "access mode", body: edit(map[string]any{"AccessMode": marker}), wantCode: CodeInvalidParameterValue, wantField: "AccessMode"},
		{name: "access mode lowercase", body: edit(map[string]any{"AccessMode": "private"}), wantCode: CodeInvalidParameterValue, wantField: "AccessMode"},
		{name: "timeout minutes too low", body: edit(map[string]any{"TimeoutNotificationMinutes": 4}), wantCode: CodeInvalidTimeoutMinutes, wantField: "TimeoutNotificationMinutes"},
		{name: "timeout minutes too high", body: edit(map[string]any{"TimeoutNotificationMinutes": 2881}), wantCode: CodeInvalidTimeoutMinutes, wantField: "TimeoutNotificationMinutes"},
		{name: "cos work dir without launch dir", body: edit(map[string]any{"WorkDir": "cos://b/" + marker}), wantCode: CodeMissingParameter, wantField: "NFOption.LaunchDir"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, err := DecodeRunApplication(c.body, c.lim)
			if c.wantCode == "" {
				if err != nil {
					t.Fatalf("DecodeRunApplication = %v, want accepted", err)
				}
				if req == nil {
					t.Fatal("accepted request is nil")
				}
				return
			}
			if req != nil {
				t.Errorf("rejected request returned %+v, want nil", req)
			}
			ve, ok := errors.AsType[*ValidationError](err)
			if !ok {
				t.Fatalf("error %v (%T), want *ValidationError", err, err)
			}
			if ve.Code != c.wantCode || ve.Field != c.wantField {
				t.Errorf("got code %q field %q, want code %q field %q", ve.Code, ve.Field, c.wantCode, c.wantField)
			}
			if ve.Reason == "" {
				t.Error("empty Reason")
			}
			msg := err.Error()
			if strings.Contains(msg, marker) || strings.Contains(msg, "4711") {
				t.Errorf("error %q echoes the offending value", msg)
			}
		})
	}
}

func TestDecodeKeepsTableIDWithCombiningDot(t *testing.T) {
	t.Parallel()
	req, err := DecodeRunApplication(readSeed(t, "seed_batch.json"), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	const want = "tab-rapid-si\u0307lver-gerbil-971422"
	if req.TableId == nil || *req.TableId != want {
		t.Errorf("TableId = %q, want %q", deref(req.TableId), want)
	}
	if len(req.TableRowUuids) != 2 {
		t.Errorf("TableRowUuids = %v, want 2 rows", req.TableRowUuids)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestValidateProgrammaticRequest(t *testing.T) {
	t.Parallel()
	valid := func() *RunApplicationRequest {
		return &RunApplicationRequest{ApplicationId: "app-1", Name: "n", EnvironmentId: "env-1", InputBase64: new("e30K")}
	}
	if err := valid().Validate(Limits{}); err != nil {
		t.Fatalf("valid request: %v", err)
	}
	cases := []struct {
		name      string
		mutate    func(*RunApplicationRequest)
		wantCode  string
		wantField string
	}{
		{"invalid UTF-8 name", func(r *RunApplicationRequest) { r.Name = "\xff" + marker }, CodeInvalidParameter, "Name"},
		{"invalid UTF-8 id", func(r *RunApplicationRequest) { r.ApplicationId = "\xff" + marker }, CodeInvalidParameter, "ApplicationId"},
		{"invalid UTF-8 nested", func(r *RunApplicationRequest) { r.NFOption = &NFOption{Config: new("\xff")} }, CodeInvalidParameter, "NFOption.Config"},
		{"invalid UTF-8 list element", func(r *RunApplicationRequest) { r.VolumeIds = []string{"v", "\xff"} }, CodeInvalidParameter, "VolumeIds"},
	}
	for _, c := range cases {
		r := valid()
		c.mutate(r)
		err := r.Validate(DefaultLimits())
		ve, ok := errors.AsType[*ValidationError](err)
		if !ok || ve.Code != c.wantCode || ve.Field != c.wantField {
			t.Errorf("%s: got %v, want %s %s", c.name, err, c.wantCode, c.wantField)
		}
	}
	var nilReq *RunApplicationRequest
	if err := nilReq.Validate(Limits{}); err == nil {
		t.Error("nil request validated")
	}
}

func TestLimitsZeroMeansDefault(t *testing.T) {
	t.Parallel()
	if got, want := (Limits{}).withDefaults(), DefaultLimits(); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if d := DefaultLimits(); d.MaxRequestBytes != 1<<20 {
		t.Errorf("DefaultLimits() = %+v", d)
	}
}

// What has one meaning is sent one way: blanks are absent, 24.0 is 24,
// wrapped base64 is unwrapped.
func TestDecodeNormalises(t *testing.T) {
	t.Parallel()
	body := []byte(`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","ProjectId":"","TableId":"","WorkDir":"",
		"InputBase64":"eyJzYW1wbGUi\nOiJTLTEifQ==","CacheClearDelay":2.4e1,"TimeoutNotificationMinutes":30.0,"Option":{"FailureMode":""}}`)
	req, err := DecodeRunApplication(body, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if req.ProjectId != nil || req.TableId != nil || req.WorkDir != nil || req.Option.FailureMode != nil {
		t.Errorf("blanks kept: %+v", req)
	}
	if req.CacheClearDelay == nil || *req.CacheClearDelay != 24 || *req.TimeoutNotificationMinutes != 30 {
		t.Errorf("integers: %v %v", req.CacheClearDelay, req.TimeoutNotificationMinutes)
	}
	if *req.InputBase64 != "eyJzYW1wbGUiOiJTLTEifQ==" {
		t.Errorf("base64 not unwrapped: %q", *req.InputBase64)
	}
	unpadded, err := DecodeRunApplication([]byte(`{"ApplicationId":"a","Name":"n","EnvironmentId":"e","InputBase64":"e30"}`), Limits{})
	if err != nil || *unpadded.InputBase64 != "e30=" {
		t.Errorf("unpadded base64: %v %v, want it sent padded", unpadded, err)
	}
	plain := []byte(`{"ApplicationId":"app-1","Name":"n","EnvironmentId":"env-1","InputBase64":"eyJzYW1wbGUiOiJTLTEifQ==","CacheClearDelay":24,"TimeoutNotificationMinutes":30,"Option":{}}`)
	want, err := DecodeRunApplication(plain, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(req)
	b, _ := json.Marshal(want)
	if !bytes.Equal(a, b) {
		t.Errorf("normalised request\n%s\nwant\n%s", a, b)
	}
}

func TestEmptyListsNormalizeToAbsent(t *testing.T) {
	t.Parallel()
	req, err := DecodeRunApplication(singletonWith(t, map[string]any{"VolumeIds": []any{}, "EmailForNotification": []any{}}), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if req.VolumeIds != nil || req.EmailForNotification != nil {
		t.Errorf("got VolumeIds %#v, EmailForNotification %#v, want nil", req.VolumeIds, req.EmailForNotification)
	}
}

func FuzzDecodeRunApplication(f *testing.F) {
	for _, name := range seedFiles {
		f.Add(readSeed(f, name))
	}
	lim := DefaultLimits()
	// The re-encoding may be longer (encoding/json escapes <, > and &), so
	// the round trip must not trip the size limit.
	relaxed := lim
	relaxed.MaxRequestBytes *= 8
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRunApplication(data, lim)
		if err != nil {
			ve, ok := errors.AsType[*ValidationError](err)
			if !ok || ve.Code == "" || ve.Reason == "" {
				t.Fatalf("error %v (%T) is not a complete *ValidationError", err, err)
			}
			if req != nil {
				t.Fatal("rejected request is not nil")
			}
			return
		}
		out, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-marshal accepted request: %v", err)
		}
		again, err := DecodeRunApplication(out, relaxed)
		if err != nil {
			t.Fatalf("re-decoding %q: %v", out, err)
		}
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("round trip changed the request\n got: %+v\nwant: %+v", again, req)
		}
	})
}

func TestUnknownKeyIsBoundedInField(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("K", 500)
	_, err := DecodeRunApplication([]byte(`{"`+long+`":1}`), Limits{})
	ve, ok := errors.AsType[*ValidationError](err)
	if !ok || ve.Code != CodeUnknownParameter || len(ve.Field) > maxFieldNameLen+len("…") || !strings.HasPrefix(ve.Field, "KKKK") {
		t.Errorf("long key: got %#v", err)
	}
	_, err = DecodeRunApplication([]byte(`{"Bad\u0007Key":1}`), Limits{})
	if ve, ok := errors.AsType[*ValidationError](err); !ok || ve.Field != "Bad?Key" {
		t.Errorf("control character in key: got %#v", err)
	}
}
