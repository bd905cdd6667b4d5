package submit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Validation error codes: the Tencent error code the real API answers for
// the same mistake, so a locally rejected request dead-letters with the code
// an operator would see from the API.
const (
	CodeMissingParameter         = "MissingParameter"
	CodeUnknownParameter         = "UnknownParameter"
	CodeInvalidParameter         = "InvalidParameter"
	CodeInvalidParameterValue    = "InvalidParameterValue"
	CodeInvalidBase64Encode      = "InvalidParameterValue.InvalidBase64Encode"
	CodeInvalidInputJSONFormat   = "InvalidParameterValue.InvalidInputJsonFormat"
	CodeInvalidRunOption         = "InvalidParameterValue.InvalidRunOption"
	CodeInvalidName              = "InvalidParameterValue.InvalidName"
	CodeInvalidDescription       = "InvalidParameterValue.InvalidDescription"
	CodeInvalidTimeoutMinutes    = "InvalidParameterValue.InvalidTimeoutMinutes"
	CodeInvalidEmailFormat       = "InvalidParameterValue.InvalidEmailFormat"
	CodeEmailCountLimitExceeded  = "FailedOperation.EmailCountLimitExceeded"
	CodeRequestSizeLimitExceeded = "RequestSizeLimitExceeded"
)

// Bounds the API documents (omics-api.md §1.1); not configurable because the
// server enforces them.
const (
	minTimeoutNotificationMinutes = 5
	maxTimeoutNotificationMinutes = 2880
)

// maxFieldNameLen bounds an unknown key echoed in ValidationError.Field.
const maxFieldNameLen = 64

// Limits bounds what DecodeRunApplication accepts. Only the size of the
// whole message is bounded locally: it is the transport's limit (a NATS
// message), not an API rule. Everything the RunApplication page does not
// forbid is left to the API. A zero or negative field means its default.
type Limits struct {
	// MaxRequestBytes bounds the whole JSON request body, in bytes.
	// Default 1 MiB (the requests stream's message limit).
	MaxRequestBytes int
}

// DefaultLimits returns the limits used when none are configured: a 1 MiB
// request.
func DefaultLimits() Limits { return Limits{MaxRequestBytes: 1 << 20} }

func (l Limits) withDefaults() Limits {
	if l.MaxRequestBytes <= 0 {
		l.MaxRequestBytes = DefaultLimits().MaxRequestBytes
	}
	return l
}

// ValidationError reports a request the API would reject. It never holds
// the offending value: request fields may carry patient or sample
// identifiers.
type ValidationError struct {
	// Code is the Tencent error code the API answers for this mistake.
	Code string
	// Field names the offending JSON key, dotted for nested keys
	// ("Option.FailureMode"); empty when the body as a whole is wrong.
	Field string
	// Reason is a short sentence naming the rule that was broken.
	Reason string
}

// Error returns "invalid run request: <Code> <Field>: <Reason>".
func (e *ValidationError) Error() string {
	if e.Field == "" {
		return "invalid run request: " + e.Code + ": " + e.Reason
	}
	return "invalid run request: " + e.Code + " " + e.Field + ": " + e.Reason
}

func invalid(code, field, reason string) *ValidationError {
	return &ValidationError{Code: code, Field: field, Reason: reason}
}

// The keys each JSON object may hold, derived once from the struct tags so
// they cannot drift from the types.
var (
	requestKeys   = jsonKeys(reflect.TypeFor[RunApplicationRequest]())
	runOptionKeys = jsonKeys(reflect.TypeFor[RunOption]())
	nfOptionKeys  = jsonKeys(reflect.TypeFor[NFOption]())
)

func jsonKeys(t reflect.Type) map[string]bool {
	keys := make(map[string]bool, t.NumField())
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		keys[name] = true
	}
	return keys
}

// DecodeRunApplication decodes a RunApplication JSON body strictly and
// validates it against the rules the RunApplication page (and JSON itself)
// states; docs/design.md lists each rule with its source. Every rejection is
// a *ValidationError: a body larger than lim.MaxRequestBytes
// (RequestSizeLimitExceeded); invalid UTF-8, malformed JSON, a body that is
// not one JSON object, a duplicated key or a value of the wrong JSON type
// (InvalidParameter); a key the API does not define, matched
// case-sensitively (UnknownParameter); then everything Validate checks.
//
// What has one meaning is normalised first: JSON null and a blank string
// for an optional field mean "not given" (the page: "if you leave it
// blank, the default ... will be used"), an integer field may be written
// 24.0, and wrapped base64 (line breaks, spaces) is unwrapped.
func DecodeRunApplication(data []byte, lim Limits) (*RunApplicationRequest, error) {
	lim = lim.withDefaults()
	if len(data) > lim.MaxRequestBytes {
		return nil, invalid(CodeRequestSizeLimitExceeded, "",
			fmt.Sprintf("request body exceeds %d bytes", lim.MaxRequestBytes))
	}
	if !utf8.Valid(data) {
		return nil, invalid(CodeInvalidParameter, "", "request body is not valid UTF-8")
	}
	// encoding/json matches keys case-insensitively and keeps the last of
	// duplicated keys; the API does neither, so keys are checked first.
	data, err := checkKeys(data, "", requestKeys, map[string]map[string]bool{
		"Option":   runOptionKeys,
		"NFOption": nfOptionKeys,
	})
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var req RunApplicationRequest
	if err := dec.Decode(&req); err != nil {
		return nil, decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid(CodeInvalidParameter, "", "request body has data after the JSON object")
	}
	req.normalize()
	if err := req.Validate(lim); err != nil {
		return nil, err
	}
	return &req, nil
}

// normalize maps what means "not given" to absent, so the request is sent
// (and its key derived) the same way however a producer spelled it: an
// empty list, a blank optional string, an empty option object.
func (r *RunApplicationRequest) normalize() {
	if len(r.TableRowUuids) == 0 {
		r.TableRowUuids = nil
	}
	if len(r.VolumeIds) == 0 {
		r.VolumeIds = nil
	}
	if len(r.EmailForNotification) == 0 {
		r.EmailForNotification = nil
	}
	for _, p := range []**string{&r.ProjectId, &r.Description, &r.InputCosUri, &r.InputBase64, &r.TableId,
		&r.ApplicationVersionId, &r.WorkDir, &r.AccessMode} {
		blankToNil(p)
	}
	if r.InputBase64 != nil {
		// Line breaks and spaces of wrapped base64 (ASCII white space only).
		unwrapped := strings.Map(func(c rune) rune {
			if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' {
				return -1
			}
			return c
		}, *r.InputBase64)
		// Unpadded base64 is sent padded: one spelling of one input.
		if doc, err := base64.RawStdEncoding.DecodeString(unwrapped); err == nil && !strings.HasSuffix(unwrapped, "=") {
			unwrapped = base64.StdEncoding.EncodeToString(doc)
		}
		r.InputBase64 = &unwrapped
	}
	if o := r.Option; o != nil {
		blankToNil(&o.FailureMode)
		blankToNil(&o.FinalWorkflowOutputsDir)
	}
	if o := r.NFOption; o != nil {
		for _, p := range []**string{&o.Config, &o.Profile, &o.NFVersion, &o.LaunchDir} {
			blankToNil(p)
		}
	}
}

func blankToNil(p **string) {
	if *p != nil && **p == "" {
		*p = nil
	}
}

// integerKeys are the integer fields whose value may be written as a JSON
// number with a zero fraction (24.0, 2.4e1): one meaning, one value.
var integerKeys = map[string]bool{"CacheClearDelay": true, "TimeoutNotificationMinutes": true}

// checkKeys verifies that data is one JSON object whose keys are all in
// allowed, each at most once; nested lists the keys whose values, when
// objects, are checked the same way. It returns the body with integral
// numbers of integer fields written as integers.
func checkKeys(data []byte, prefix string, allowed map[string]bool, nested map[string]map[string]bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		if prefix != "" {
			// The typed decode reports the wrong type with the field name.
			return data, nil
		}
		return nil, invalid(CodeInvalidParameter, "", "request body must be a JSON object")
	}
	seen := make(map[string]bool)
	changed := false
	var out bytes.Buffer
	out.WriteByte('{')
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
		}
		key, _ := tok.(string)
		field := prefix + SafeFieldName(key)
		if !allowed[key] {
			return nil, invalid(CodeUnknownParameter, field, "the API defines no such parameter")
		}
		if seen[key] {
			return nil, invalid(CodeInvalidParameter, field, "parameter is given more than once")
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, invalid(CodeInvalidParameter, field, "body is not valid JSON")
		}
		if sub, ok := nested[key]; ok {
			fixed, err := checkKeys(raw, field+".", sub, nil)
			if err != nil {
				return nil, err
			}
			changed = changed || !bytes.Equal(fixed, raw)
			raw = fixed
		}
		if integerKeys[key] && prefix == "" {
			if whole, ok := integralNumber(raw); ok {
				changed = true
				raw = whole
			}
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		out.Write(raw)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
	}
	if prefix == "" {
		// Checked here too, because a rewritten body drops what follows.
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return nil, invalid(CodeInvalidParameter, "", "request body has data after the JSON object")
		}
	}
	if !changed {
		return data, nil
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// integralNumber returns raw as an integer literal when it is a JSON number
// written with a fraction or exponent (or as -0) whose value is exactly a
// whole non-negative number; ok is false when there is nothing to rewrite.
// The literal is bounded first: a tiny message must not make the decoder
// expand 1e100000000.
func integralNumber(raw json.RawMessage) (json.RawMessage, bool) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || len(s) > 40 || s[0] == '"' || !json.Valid(raw) {
		return nil, false
	}
	if !strings.ContainsAny(s, ".eE") && s != "-0" {
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		exp, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || exp > 20 || exp < -40 {
			return nil, false
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() < 0 || !r.IsInt() {
		return nil, false
	}
	return json.RawMessage(r.Num().String()), true
}

func fieldName(prefix string) string { return strings.TrimSuffix(prefix, ".") }

// SafeFieldName bounds a field or key name before it is echoed in an error
// (as ValidationError.Field, or by a tool): a name is not a value, but a
// hostile one could be huge or unprintable. It keeps at most 64 bytes and
// replaces unprintable characters with '?'.
func SafeFieldName(key string) string {
	var b strings.Builder
	for _, r := range key {
		if b.Len()+utf8.RuneLen(r) > maxFieldNameLen {
			b.WriteString("…")
			break
		}
		if !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// decodeError maps an encoding/json error to a ValidationError without
// echoing any part of the input (SyntaxError and UnmarshalTypeError text
// can quote it).
func decodeError(err error) error {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return invalid(CodeInvalidParameter, te.Field, "value has the wrong JSON type, want "+jsonTypeName(te.Type))
	}
	return invalid(CodeInvalidParameter, "", "request body is not valid JSON")
}

func jsonTypeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Slice:
		return "an array"
	case reflect.Struct:
		return "an object"
	default:
		return t.Kind().String()
	}
}

// Validate checks r against the rules the RunApplication page and the API
// reference state (docs/design.md lists each with its source), returning
// the first violation as a *ValidationError, or nil. It does not modify r.
// A blank optional string is checked as given: DecodeRunApplication
// normalises blanks away first.
func (r *RunApplicationRequest) Validate(lim Limits) error {
	if r == nil {
		return invalid(CodeMissingParameter, "", "request is empty")
	}
	required := []struct{ field, value string }{
		{"ApplicationId", r.ApplicationId},
		{"Name", r.Name},
		{"EnvironmentId", r.EnvironmentId},
	}
	for _, f := range required {
		if f.value == "" {
			return invalid(CodeMissingParameter, f.field, "parameter is required")
		}
	}
	// JSON text is UTF-8; a request built in Go could hold anything.
	if field := invalidUTF8(reflect.ValueOf(r).Elem(), ""); field != "" {
		return invalid(CodeInvalidParameter, field, "must be valid UTF-8")
	}
	if err := checkInput(r.InputBase64, r.InputCosUri); err != nil {
		return err
	}
	if err := r.Option.validate(); err != nil {
		return err
	}
	if r.WorkDir != nil && strings.HasPrefix(*r.WorkDir, "cos://") && (r.NFOption == nil || r.NFOption.LaunchDir == nil) {
		return invalid(CodeMissingParameter, "NFOption.LaunchDir", "a COS WorkDir requires NFOption.LaunchDir")
	}
	if r.AccessMode != nil && *r.AccessMode != "PRIVATE" && *r.AccessMode != "PUBLIC" {
		return invalid(CodeInvalidParameterValue, "AccessMode", "must be PRIVATE or PUBLIC")
	}
	if m := r.TimeoutNotificationMinutes; m != nil && (*m < minTimeoutNotificationMinutes || *m > maxTimeoutNotificationMinutes) {
		return invalid(CodeInvalidTimeoutMinutes, "TimeoutNotificationMinutes",
			fmt.Sprintf("must be %d to %d minutes", minTimeoutNotificationMinutes, maxTimeoutNotificationMinutes))
	}
	return nil
}

func (o *RunOption) validate() error {
	if o == nil {
		return nil
	}
	if o.FailureMode != nil && *o.FailureMode != "ContinueWhilePossible" && *o.FailureMode != "NoNewCalls" {
		return invalid(CodeInvalidRunOption, "Option.FailureMode", "must be ContinueWhilePossible or NoNewCalls")
	}
	return nil
}

// checkInput applies the one-of rule (omics-api.md §1.1: exactly one of
// InputCosUri and InputBase64) and checks that an inline input is base64
// of a JSON document (the page: "Base64 encoding is required"; the API's
// InvalidBase64Encode and InvalidInputJsonFormat codes).
func checkInput(b64, cosURI *string) error {
	switch {
	case b64 == nil && cosURI == nil:
		return invalid(CodeMissingParameter, "InputBase64", "one of InputBase64 and InputCosUri is required")
	case b64 != nil && cosURI != nil:
		return invalid(CodeInvalidParameter, "InputCosUri", "InputBase64 and InputCosUri are mutually exclusive")
	case cosURI != nil:
		return nil
	}
	// Padding is not insisted on: the page asks for base64, not for a
	// particular spelling of it.
	doc, err := base64.StdEncoding.DecodeString(*b64)
	if err != nil {
		doc, err = base64.RawStdEncoding.DecodeString(*b64)
	}
	if err != nil {
		return invalid(CodeInvalidBase64Encode, "InputBase64", "must be standard base64")
	}
	if !json.Valid(doc) {
		return invalid(CodeInvalidInputJSONFormat, "InputBase64", "decoded input must be a JSON document")
	}
	return nil
}

// invalidUTF8 returns the JSON name of the first string field (nested, or a
// list element) of v that is not valid UTF-8, or "".
func invalidUTF8(v reflect.Value, prefix string) string {
	t := v.Type()
	for i := range v.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		f := v.Field(i)
		if f.Kind() == reflect.Pointer {
			if f.IsNil() {
				continue
			}
			f = f.Elem()
		}
		switch f.Kind() {
		case reflect.String:
			if !utf8.ValidString(f.String()) {
				return prefix + name
			}
		case reflect.Slice:
			for j := range f.Len() {
				if e := f.Index(j); e.Kind() == reflect.String && !utf8.ValidString(e.String()) {
					return prefix + name
				}
			}
		case reflect.Struct:
			if field := invalidUTF8(f, prefix+name+"."); field != "" {
				return field
			}
		}
	}
	return ""
}
