package sandbox

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The sandbox decodes and validates RunApplication bodies with its own
// code, written from the API's RunApplication page and omics-api.md, and
// never with the client's (internal/submit): otherwise no test could show
// that a client rule is stricter than the API. Where the sources are
// silent the sandbox accepts. docs/sandbox.md ("Validation") lists every
// rule with its source and what is deliberately not checked.

// Error codes of the RunApplication rules (omics-api.md §1.5, §2).
const (
	codeInvalidBase64Encode    = "InvalidParameterValue.InvalidBase64Encode"
	codeInvalidInputJSONFormat = "InvalidParameterValue.InvalidInputJsonFormat"
	codeInvalidRunOption       = "InvalidParameterValue.InvalidRunOption"
	codeInvalidTimeoutMinutes  = "InvalidParameterValue.InvalidTimeoutMinutes"
)

// Enumerations and bounds the sources document.
var (
	accessModes  = []string{"PRIVATE", "PUBLIC"}                   // page: AccessMode
	failureModes = []string{"ContinueWhilePossible", "NoNewCalls"} // omics-api.md §1.2
)

const (
	minTimeoutNotificationMinutes = 5    // omics-api.md §1.1
	maxTimeoutNotificationMinutes = 2880 // omics-api.md §1.1
	defaultAccessMode             = "PRIVATE"
	cosScheme                     = "cos://"
)

// runApplicationRequest is a RunApplication body as the sandbox reads it:
// the page's parameters plus the notification fields omics-api.md §1.1
// lists. After decodeRunApplication, an optional string given as "" is
// nil (the page: a blank means the default), and JSON null is absent.
type runApplicationRequest struct {
	ApplicationId              string
	Name                       string
	EnvironmentId              string
	ProjectId                  *string
	Description                *string
	InputCosUri                *string
	InputBase64                *string
	TableId                    *string
	TableRowUuids              []string
	CacheClearDelay            *uint64
	ApplicationVersionId       *string
	Option                     *runOption
	NFOption                   *nfOption
	WorkDir                    *string
	AccessMode                 *string
	VolumeIds                  []string
	ResultNotification         *bool
	TimeoutNotification        *bool
	TimeoutNotificationMinutes *uint64
	EmailForNotification       []string

	// input is the decoded InputBase64 document, nil for a COS input.
	input []byte
}

// runOption is the RunOption struct (WDL options, omics-api.md §1.2).
type runOption struct {
	FailureMode             *string
	UseCallCache            *bool
	UseErrorOnHold          *bool
	FinalWorkflowOutputsDir *string
	UseRelativeOutputPaths  *bool
	AddRunInfoToOutputDir   *bool
}

// nfOption is the NFOption struct (Nextflow options, omics-api.md §1.3).
type nfOption struct {
	Config    *string
	Profile   *string
	Report    *bool
	Resume    *bool
	NFVersion *string
	LaunchDir *string
}

// The keys each object defines, matched case-sensitively.
var (
	requestKeys = []string{"ApplicationId", "Name", "EnvironmentId", "ProjectId", "Description",
		"InputCosUri", "InputBase64", "TableId", "TableRowUuids", "CacheClearDelay", "ApplicationVersionId",
		"Option", "NFOption", "WorkDir", "AccessMode", "VolumeIds",
		"ResultNotification", "TimeoutNotification", "TimeoutNotificationMinutes", "EmailForNotification"}
	runOptionKeys = []string{"FailureMode", "UseCallCache", "UseErrorOnHold", "FinalWorkflowOutputsDir",
		"UseRelativeOutputPaths", "AddRunInfoToOutputDir"}
	nfOptionKeys = []string{"Config", "Profile", "Report", "Resume", "NFVersion", "LaunchDir"}
)

// decodeRunApplication decodes and validates a RunApplication body. The
// first rule broken answers; messages name the field and the rule, never a
// value or an unknown key.
func decodeRunApplication(body []byte) (*runApplicationRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(codeInvalidParameter, "the request body is not valid UTF-8")
	}
	r := &runApplicationRequest{}
	var applicationID, name, environmentID *string
	err := decodeObject(body, "", requestKeys, func(key string, v []byte) *apiError {
		var e *apiError
		switch key {
		case "ApplicationId":
			applicationID, e = jsonString(key, v)
		case "Name":
			name, e = jsonString(key, v)
		case "EnvironmentId":
			environmentID, e = jsonString(key, v)
		case "ProjectId":
			r.ProjectId, e = jsonString(key, v)
		case "Description":
			r.Description, e = jsonString(key, v)
		case "InputCosUri":
			r.InputCosUri, e = jsonString(key, v)
		case "InputBase64":
			r.InputBase64, e = jsonString(key, v)
		case "TableId":
			r.TableId, e = jsonString(key, v)
		case "TableRowUuids":
			r.TableRowUuids, e = jsonStrings(key, v)
		case "CacheClearDelay":
			r.CacheClearDelay, e = jsonUint(key, v, "a non-negative integer number of hours")
		case "ApplicationVersionId":
			r.ApplicationVersionId, e = jsonString(key, v)
		case "Option":
			r.Option, e = decodeRunOption("Option", v)
		case "NFOption":
			r.NFOption, e = decodeNFOption(v)
		case "WorkDir":
			r.WorkDir, e = jsonString(key, v)
		case "AccessMode":
			r.AccessMode, e = jsonString(key, v)
		case "VolumeIds":
			r.VolumeIds, e = jsonStrings(key, v)
		case "ResultNotification":
			r.ResultNotification, e = jsonBool(key, v)
		case "TimeoutNotification":
			r.TimeoutNotification, e = jsonBool(key, v)
		case "TimeoutNotificationMinutes":
			r.TimeoutNotificationMinutes, e = jsonUint(key, v, "a non-negative integer number of minutes")
		case "EmailForNotification":
			r.EmailForNotification, e = jsonStrings(key, v)
		}
		return e
	})
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		key string
		v   *string
		dst *string
	}{
		{"ApplicationId", applicationID, &r.ApplicationId},
		{"Name", name, &r.Name},
		{"EnvironmentId", environmentID, &r.EnvironmentId},
	} {
		if f.v == nil || *f.v == "" {
			return nil, errorf(codeMissingParameter, "%s: the parameter is required", f.key)
		}
		*f.dst = *f.v
	}
	r.blanksAreAbsent()
	if e := r.validate(); e != nil {
		return nil, e
	}
	return r, nil
}

// blanksAreAbsent turns every optional string given as "" into nil.
func (r *runApplicationRequest) blanksAreAbsent() {
	for _, p := range []**string{&r.ProjectId, &r.Description, &r.InputCosUri, &r.InputBase64, &r.TableId,
		&r.ApplicationVersionId, &r.WorkDir, &r.AccessMode} {
		blankIsAbsent(p)
	}
	r.Option.blanksAreAbsent()
	r.NFOption.blanksAreAbsent()
}

func (o *runOption) blanksAreAbsent() {
	if o != nil {
		blankIsAbsent(&o.FailureMode)
		blankIsAbsent(&o.FinalWorkflowOutputsDir)
	}
}

func (o *nfOption) blanksAreAbsent() {
	if o != nil {
		for _, p := range []**string{&o.Config, &o.Profile, &o.NFVersion, &o.LaunchDir} {
			blankIsAbsent(p)
		}
	}
}

func blankIsAbsent(p **string) {
	if *p != nil && **p == "" {
		*p = nil
	}
}

// validate applies the value rules to a decoded request.
func (r *runApplicationRequest) validate() *apiError {
	switch {
	case r.InputBase64 == nil && r.InputCosUri == nil:
		return errorf(codeMissingParameter, "InputBase64: one of InputBase64 and InputCosUri is required")
	case r.InputBase64 != nil && r.InputCosUri != nil:
		return errorf(codeInvalidParameter, "InputCosUri: exactly one of InputBase64 and InputCosUri may be given, not both")
	case r.InputBase64 != nil:
		doc, ok := decodeBase64(*r.InputBase64)
		if !ok {
			return errorf(codeInvalidBase64Encode, "InputBase64: must be standard base64")
		}
		if !json.Valid(doc) {
			return errorf(codeInvalidInputJSONFormat, "InputBase64: the decoded input must be a JSON document")
		}
		r.input = doc
	}
	if r.AccessMode != nil && !slices.Contains(accessModes, *r.AccessMode) {
		return errorf(codeInvalidParameterValue, "AccessMode: must be %s", strings.Join(accessModes, " or "))
	}
	if e := r.Option.validate("Option"); e != nil {
		return e
	}
	if m := r.TimeoutNotificationMinutes; m != nil && (*m < minTimeoutNotificationMinutes || *m > maxTimeoutNotificationMinutes) {
		return errorf(codeInvalidTimeoutMinutes, "TimeoutNotificationMinutes: must be %d to %d minutes",
			minTimeoutNotificationMinutes, maxTimeoutNotificationMinutes)
	}
	if r.WorkDir != nil && strings.HasPrefix(*r.WorkDir, cosScheme) && (r.NFOption == nil || r.NFOption.LaunchDir == nil) {
		return errorf(codeMissingParameter, "NFOption.LaunchDir: the parameter is required when WorkDir is a COS path")
	}
	return nil
}

// validate checks the FailureMode of a RunOption given as parameter name.
func (o *runOption) validate(name string) *apiError {
	if o != nil && o.FailureMode != nil && !slices.Contains(failureModes, *o.FailureMode) {
		return errorf(codeInvalidRunOption, "%s.FailureMode: must be %s", name, strings.Join(failureModes, " or "))
	}
	return nil
}

// decodeBase64 decodes standard-alphabet base64, ignoring ASCII whitespace
// (wrapped base64) and accepting the padding left off.
func decodeBase64(s string) ([]byte, bool) {
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			return -1
		}
		return r
	}, s)
	enc := base64.StdEncoding
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	doc, err := enc.DecodeString(s)
	return doc, err == nil
}

// decodeRunOption decodes a RunOption object given as the parameter name
// (RunApplication's Option, RetryRuns' WDLOption).
func decodeRunOption(name string, v []byte) (*runOption, *apiError) {
	if isNull(v) {
		return nil, nil
	}
	if !isObject(v) {
		return nil, errorf(codeInvalidParameter, "%s: must be an object", name)
	}
	o := &runOption{}
	err := decodeObject(v, name, runOptionKeys, func(key string, v []byte) *apiError {
		field := name + "." + key
		var e *apiError
		switch key {
		case "FailureMode":
			o.FailureMode, e = jsonString(field, v)
		case "UseCallCache":
			o.UseCallCache, e = jsonBool(field, v)
		case "UseErrorOnHold":
			o.UseErrorOnHold, e = jsonBool(field, v)
		case "FinalWorkflowOutputsDir":
			o.FinalWorkflowOutputsDir, e = jsonString(field, v)
		case "UseRelativeOutputPaths":
			o.UseRelativeOutputPaths, e = jsonBool(field, v)
		case "AddRunInfoToOutputDir":
			o.AddRunInfoToOutputDir, e = jsonBool(field, v)
		}
		return e
	})
	return o, err
}

func decodeNFOption(v []byte) (*nfOption, *apiError) {
	if isNull(v) {
		return nil, nil
	}
	if !isObject(v) {
		return nil, errorf(codeInvalidParameter, "NFOption: must be an object")
	}
	o := &nfOption{}
	err := decodeObject(v, "NFOption", nfOptionKeys, func(key string, v []byte) *apiError {
		field := "NFOption." + key
		var e *apiError
		switch key {
		case "Config":
			o.Config, e = jsonString(field, v)
		case "Profile":
			o.Profile, e = jsonString(field, v)
		case "Report":
			o.Report, e = jsonBool(field, v)
		case "Resume":
			o.Resume, e = jsonBool(field, v)
		case "NFVersion":
			o.NFVersion, e = jsonString(field, v)
		case "LaunchDir":
			o.LaunchDir, e = jsonString(field, v)
		}
		return e
	})
	return o, err
}

// decodeObject walks the JSON object data, named field ("" for the request
// body itself), and calls assign with each key and its raw value. A key not
// in keys is UnknownParameter, a key given twice InvalidParameter; data
// must hold nothing after the object.
func decodeObject(data []byte, field string, keys []string, assign func(key string, v []byte) *apiError) *apiError {
	malformed := func() *apiError {
		if field == "" {
			return errorf(codeInvalidParameter, "the request body is not valid JSON")
		}
		return errorf(codeInvalidParameter, "%s: the object is not valid JSON", field)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return malformed()
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		if field == "" {
			return errorf(codeInvalidParameter, "the request body must be one JSON object")
		}
		return errorf(codeInvalidParameter, "%s: must be an object", field)
	}
	seen := make(map[string]bool, len(keys))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformed()
		}
		key, _ := tok.(string)
		if !slices.Contains(keys, key) {
			// The key itself is not echoed: only defined names appear in
			// messages.
			if field == "" {
				return errorf(codeUnknownParameter, "the request has a parameter the API does not define (names are case-sensitive)")
			}
			return errorf(codeUnknownParameter, "%s: the object has a parameter the API does not define (names are case-sensitive)", field)
		}
		name := key
		if field != "" {
			name = field + "." + key
		}
		if seen[key] {
			return errorf(codeInvalidParameter, "%s: the parameter is given more than once", name)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return malformed()
		}
		if e := assign(key, bytes.TrimSpace(raw)); e != nil {
			return e
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return malformed()
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if field == "" {
			return errorf(codeInvalidParameter, "the request body must be one JSON object, with nothing after it")
		}
		return malformed()
	}
	return nil
}

func isNull(v []byte) bool   { return string(v) == "null" }
func isObject(v []byte) bool { return len(v) > 0 && v[0] == '{' }

func wrongType(field, want string) *apiError {
	return errorf(codeInvalidParameter, "%s: must be %s", field, want)
}

// jsonString decodes a JSON string; null is absent.
func jsonString(field string, v []byte) (*string, *apiError) {
	if isNull(v) {
		return nil, nil
	}
	var s string
	if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil {
		return nil, wrongType(field, "a string")
	}
	return &s, nil
}

// jsonBool decodes a JSON boolean; null is absent.
func jsonBool(field string, v []byte) (*bool, *apiError) {
	var b bool
	switch string(v) {
	case "null":
		return nil, nil
	case "true":
		b = true
	case "false":
	default:
		return nil, wrongType(field, "a boolean")
	}
	return &b, nil
}

// jsonStrings decodes a JSON array of strings; null is absent, and so is
// an empty array.
func jsonStrings(field string, v []byte) ([]string, *apiError) {
	if isNull(v) {
		return nil, nil
	}
	if len(v) == 0 || v[0] != '[' {
		return nil, wrongType(field, "an array of strings")
	}
	var raws []json.RawMessage
	if json.Unmarshal(v, &raws) != nil {
		return nil, wrongType(field, "an array of strings")
	}
	if len(raws) == 0 {
		return nil, nil
	}
	out := make([]string, len(raws))
	for i, raw := range raws {
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &out[i]) != nil {
			return nil, errorf(codeInvalidParameter, "%s: each element must be a string", field)
		}
	}
	return out, nil
}

// jsonUint decodes a JSON number with a non-negative integral value that
// fits 64 bits: 24, 24.0 and 2.4e1 are all 24. null is absent.
func jsonUint(field string, v []byte, want string) (*uint64, *apiError) {
	if isNull(v) {
		return nil, nil
	}
	n, ok := integralValue(string(v))
	if !ok {
		return nil, errorf(codeInvalidParameter, "%s: must be %s", field, want)
	}
	return &n, nil
}

// integralValue parses the JSON number text s exactly (no float rounding)
// and reports whether it is a non-negative integer that fits a uint64.
// "-0" is zero.
func integralValue(s string) (uint64, bool) {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, exp, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, hasDot := strings.Cut(mant, ".")
	if !allDigits(intPart) || hasDot && !allDigits(frac) || len(intPart) > 1 && intPart[0] == '0' {
		return 0, false
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	e := -len(frac)
	if hasExp {
		sign := 1
		switch {
		case strings.HasPrefix(exp, "+"):
			exp = exp[1:]
		case strings.HasPrefix(exp, "-"):
			exp, sign = exp[1:], -1
		}
		if !allDigits(exp) {
			return 0, false
		}
		if digits == "" {
			return 0, true // zero, whatever the exponent
		}
		exp = strings.TrimLeft(exp, "0")
		if len(exp) > 6 { // |exponent| ≥ 10^6: fractional or far beyond 64 bits
			return 0, false
		}
		x, _ := strconv.Atoi("0" + exp)
		e += sign * x
	}
	if digits == "" {
		return 0, true
	}
	for e < 0 && strings.HasSuffix(digits, "0") {
		digits, e = digits[:len(digits)-1], e+1
	}
	if neg || e < 0 || len(digits)+e > 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(digits+strings.Repeat("0", e), 10, 64)
	return n, err == nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
