package submit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"reflect"
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

// Bounds the API documents; not configurable because the server enforces them.
const (
	minTimeoutNotificationMinutes = 5
	maxTimeoutNotificationMinutes = 2880
)

// Length caps for free-form fields the API documents no limit for. They are
// generous; their job is to stop absurd payloads before they reach the API.
const (
	maxPathBytes     = 1024      // WorkDir, InputCosUri, LaunchDir, FinalWorkflowOutputsDir
	maxNFConfigBytes = 64 << 10  // NFOption.Config (configuration text)
	maxShortBytes    = 256       // NFOption.Profile, NFOption.NFVersion
	maxEmailBytes    = 254       // RFC 5321 path limit
	maxFieldNameLen  = 64        // longest unknown key echoed in ValidationError.Field
	defaultMaxInput  = 768 << 10 // keeps base64 of the input (4/3 larger) under 1 MiB
)

// Limits bounds what DecodeRunApplication and Validate accept. A zero or
// negative field means its default (see DefaultLimits).
type Limits struct {
	// MaxRequestBytes bounds the whole JSON request body, in bytes.
	// Default 1 MiB.
	MaxRequestBytes int
	// MaxInputBytes bounds the decoded InputBase64 document, in bytes.
	// Default 768 KiB, so its base64 form still fits a 1 MiB request.
	MaxInputBytes int
	// MaxNameBytes bounds Name, in bytes of UTF-8. Default 128.
	MaxNameBytes int
	// MaxDescriptionBytes bounds Description, in bytes of UTF-8. Default 1024.
	MaxDescriptionBytes int
	// MaxIDBytes bounds each identifier (ApplicationId, EnvironmentId,
	// ProjectId, TableId, ApplicationVersionId, each VolumeIds and
	// TableRowUuids element), in bytes. Default 128.
	MaxIDBytes int
	// MaxListLen bounds the number of elements of TableRowUuids and of
	// VolumeIds. Default 1000.
	MaxListLen int
	// MaxEmails bounds the number of EmailForNotification addresses.
	// Default 10.
	MaxEmails int
}

// DefaultLimits returns the limits used when none are configured: request
// 1 MiB, decoded input 768 KiB, Name 128 bytes, Description 1024 bytes, IDs
// 128 bytes, lists 1000 elements, 10 e-mail addresses.
func DefaultLimits() Limits {
	return Limits{
		MaxRequestBytes:     1 << 20,
		MaxInputBytes:       defaultMaxInput,
		MaxNameBytes:        128,
		MaxDescriptionBytes: 1024,
		MaxIDBytes:          128,
		MaxListLen:          1000,
		MaxEmails:           10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	pick := func(v, def int) int {
		if v <= 0 {
			return def
		}
		return v
	}
	return Limits{
		MaxRequestBytes:     pick(l.MaxRequestBytes, d.MaxRequestBytes),
		MaxInputBytes:       pick(l.MaxInputBytes, d.MaxInputBytes),
		MaxNameBytes:        pick(l.MaxNameBytes, d.MaxNameBytes),
		MaxDescriptionBytes: pick(l.MaxDescriptionBytes, d.MaxDescriptionBytes),
		MaxIDBytes:          pick(l.MaxIDBytes, d.MaxIDBytes),
		MaxListLen:          pick(l.MaxListLen, d.MaxListLen),
		MaxEmails:           pick(l.MaxEmails, d.MaxEmails),
	}
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
// validates it. Every rejection is a *ValidationError: a body larger than
// lim.MaxRequestBytes (RequestSizeLimitExceeded); invalid UTF-8, malformed
// JSON, a body that is not one JSON object, a duplicated key or a value of
// the wrong JSON type (InvalidParameter); a key the API does not define,
// matched case-sensitively (UnknownParameter); then everything Validate
// checks. JSON null is treated as an absent field.
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
	if err := checkKeys(data, "", requestKeys, map[string]map[string]bool{
		"Option":   runOptionKeys,
		"NFOption": nfOptionKeys,
	}); err != nil {
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

// normalize maps an empty JSON list to an absent one: both mean "not
// given" to the API, and omitempty would drop the empty list on re-encoding.
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
}

// checkKeys verifies that data is one JSON object whose keys are all in
// allowed, each at most once; nested lists the keys whose values, when
// objects, are checked the same way.
func checkKeys(data []byte, prefix string, allowed map[string]bool, nested map[string]map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		if prefix != "" {
			// The typed decode reports the wrong type with the field name.
			return nil
		}
		return invalid(CodeInvalidParameter, "", "request body must be a JSON object")
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
		}
		key, _ := tok.(string)
		field := prefix + SafeFieldName(key)
		if !allowed[key] {
			return invalid(CodeUnknownParameter, field, "the API defines no such parameter")
		}
		if seen[key] {
			return invalid(CodeInvalidParameter, field, "parameter is given more than once")
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return invalid(CodeInvalidParameter, field, "body is not valid JSON")
		}
		if sub, ok := nested[key]; ok {
			if err := checkKeys(raw, field+".", sub, nil); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return invalid(CodeInvalidParameter, fieldName(prefix), "body is not valid JSON")
	}
	return nil
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

// Validate checks r against the API's documented rules and the limits in
// lim (zero fields mean defaults), returning the first violation as a
// *ValidationError, or nil. It does not modify r.
func (r *RunApplicationRequest) Validate(lim Limits) error {
	if r == nil {
		return invalid(CodeMissingParameter, "", "request is empty")
	}
	lim = lim.withDefaults()
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
	if err := checkID("ApplicationId", r.ApplicationId, lim); err != nil {
		return err
	}
	if err := checkName(r.Name, lim); err != nil {
		return err
	}
	if err := checkID("EnvironmentId", r.EnvironmentId, lim); err != nil {
		return err
	}
	for _, f := range []struct {
		field string
		value *string
	}{
		{"ProjectId", r.ProjectId},
		{"TableId", r.TableId},
		{"ApplicationVersionId", r.ApplicationVersionId},
	} {
		if f.value != nil {
			if err := checkID(f.field, *f.value, lim); err != nil {
				return err
			}
		}
	}
	if r.Description != nil {
		if err := checkDescription(*r.Description, lim); err != nil {
			return err
		}
	}
	if err := checkInput(r.InputBase64, r.InputCosUri, lim); err != nil {
		return err
	}
	if err := checkIDList("TableRowUuids", r.TableRowUuids, lim); err != nil {
		return err
	}
	if r.TableRowUuids != nil && r.TableId == nil {
		return invalid(CodeInvalidParameter, "TableRowUuids", "TableRowUuids requires TableId")
	}
	if err := checkIDList("VolumeIds", r.VolumeIds, lim); err != nil {
		return err
	}
	if err := r.Option.validate(); err != nil {
		return err
	}
	if err := r.NFOption.validate(); err != nil {
		return err
	}
	if r.WorkDir != nil {
		if err := checkPath("WorkDir", *r.WorkDir, CodeInvalidParameterValue); err != nil {
			return err
		}
		if strings.HasPrefix(*r.WorkDir, "cos://") && (r.NFOption == nil || r.NFOption.LaunchDir == nil) {
			return invalid(CodeMissingParameter, "NFOption.LaunchDir", "a COS WorkDir requires NFOption.LaunchDir")
		}
	}
	if r.AccessMode != nil && *r.AccessMode != "PRIVATE" && *r.AccessMode != "PUBLIC" {
		return invalid(CodeInvalidParameterValue, "AccessMode", "must be PRIVATE or PUBLIC")
	}
	if m := r.TimeoutNotificationMinutes; m != nil && (*m < minTimeoutNotificationMinutes || *m > maxTimeoutNotificationMinutes) {
		return invalid(CodeInvalidTimeoutMinutes, "TimeoutNotificationMinutes",
			fmt.Sprintf("must be %d to %d minutes", minTimeoutNotificationMinutes, maxTimeoutNotificationMinutes))
	}
	return checkEmails(r.EmailForNotification, lim)
}

func (o *RunOption) validate() error {
	if o == nil {
		return nil
	}
	if o.FailureMode != nil && *o.FailureMode != "ContinueWhilePossible" && *o.FailureMode != "NoNewCalls" {
		return invalid(CodeInvalidRunOption, "Option.FailureMode", "must be ContinueWhilePossible or NoNewCalls")
	}
	if o.FinalWorkflowOutputsDir != nil {
		return checkPath("Option.FinalWorkflowOutputsDir", *o.FinalWorkflowOutputsDir, CodeInvalidRunOption)
	}
	return nil
}

func (o *NFOption) validate() error {
	if o == nil {
		return nil
	}
	if o.Config != nil {
		c := *o.Config
		if len(c) > maxNFConfigBytes {
			return invalid(CodeInvalidParameterValue, "NFOption.Config", fmt.Sprintf("must be at most %d bytes", maxNFConfigBytes))
		}
		// Configuration text legitimately holds line breaks and tabs.
		if !utf8.ValidString(c) || strings.ContainsFunc(c, func(r rune) bool {
			return unicode.IsControl(r) && r != '\n' && r != '\r' && r != '\t'
		}) {
			return invalid(CodeInvalidParameterValue, "NFOption.Config", "must be UTF-8 text without control characters other than line breaks and tabs")
		}
	}
	for _, f := range []struct {
		field string
		value *string
	}{
		{"NFOption.Profile", o.Profile},
		{"NFOption.NFVersion", o.NFVersion},
	} {
		if f.value != nil {
			if err := checkToken(f.field, *f.value, maxShortBytes, CodeInvalidParameterValue); err != nil {
				return err
			}
		}
	}
	if o.LaunchDir != nil {
		return checkPath("NFOption.LaunchDir", *o.LaunchDir, CodeInvalidParameterValue)
	}
	return nil
}

// checkID accepts identifiers of any script (the API's own example TableId
// holds a combining dot, U+0307) but no whitespace or control characters.
func checkID(field, v string, lim Limits) error {
	return checkToken(field, v, lim.MaxIDBytes, CodeInvalidParameterValue)
}

func checkToken(field, v string, maxBytes int, code string) error {
	if problem := tokenProblem(v, maxBytes); problem != "" {
		return invalid(code, field, problem)
	}
	return nil
}

// tokenProblem returns the rule v breaks as an identifier-like token, or "".
func tokenProblem(v string, maxBytes int) string {
	switch {
	case v == "":
		return "must not be empty"
	case len(v) > maxBytes:
		return fmt.Sprintf("must be at most %d bytes", maxBytes)
	case !utf8.ValidString(v):
		return "must be valid UTF-8"
	case strings.ContainsFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return "must not contain whitespace or control characters"
	}
	return ""
}

func checkIDList(field string, ids []string, lim Limits) error {
	if len(ids) > lim.MaxListLen {
		return invalid(CodeInvalidParameterValue, field, fmt.Sprintf("must have at most %d elements", lim.MaxListLen))
	}
	for _, id := range ids {
		if problem := tokenProblem(id, lim.MaxIDBytes); problem != "" {
			return invalid(CodeInvalidParameterValue, field, "each element "+problem)
		}
	}
	return nil
}

func checkName(v string, lim Limits) error {
	switch {
	case len(v) > lim.MaxNameBytes:
		return invalid(CodeInvalidName, "Name", fmt.Sprintf("must be at most %d bytes", lim.MaxNameBytes))
	case !utf8.ValidString(v):
		return invalid(CodeInvalidName, "Name", "must be valid UTF-8")
	case strings.ContainsFunc(v, unicode.IsControl):
		return invalid(CodeInvalidName, "Name", "must not contain control characters")
	}
	return nil
}

func checkDescription(v string, lim Limits) error {
	switch {
	case len(v) > lim.MaxDescriptionBytes:
		return invalid(CodeInvalidDescription, "Description", fmt.Sprintf("must be at most %d bytes", lim.MaxDescriptionBytes))
	case !utf8.ValidString(v):
		return invalid(CodeInvalidDescription, "Description", "must be valid UTF-8")
	case strings.ContainsFunc(v, unicode.IsControl):
		return invalid(CodeInvalidDescription, "Description", "must not contain control characters")
	}
	return nil
}

// checkPath accepts an absolute volume path or a COS path: non-empty, at
// most maxPathBytes, no control characters (spaces are legal in COS keys).
func checkPath(field, v, code string) error {
	switch {
	case v == "":
		return invalid(code, field, "must not be empty")
	case len(v) > maxPathBytes:
		return invalid(code, field, fmt.Sprintf("must be at most %d bytes", maxPathBytes))
	case !utf8.ValidString(v):
		return invalid(code, field, "must be valid UTF-8")
	case strings.ContainsFunc(v, unicode.IsControl):
		return invalid(code, field, "must not contain control characters")
	}
	return nil
}

func checkInput(b64, cosURI *string, lim Limits) error {
	switch {
	case b64 == nil && cosURI == nil:
		return invalid(CodeMissingParameter, "InputBase64", "one of InputBase64 and InputCosUri is required")
	case b64 != nil && cosURI != nil:
		return invalid(CodeInvalidParameter, "InputCosUri", "InputBase64 and InputCosUri are mutually exclusive")
	case cosURI != nil:
		if err := checkPath("InputCosUri", *cosURI, CodeInvalidParameterValue); err != nil {
			return err
		}
		if !strings.HasPrefix(*cosURI, "cos://") || len(*cosURI) == len("cos://") {
			return invalid(CodeInvalidParameterValue, "InputCosUri", "must be a cos:// URI")
		}
		return nil
	}
	enc := base64.StdEncoding.Strict()
	// Check the size before decoding so a huge input is not decoded at all.
	if enc.DecodedLen(len(*b64)) > lim.MaxInputBytes+2 {
		return invalid(CodeRequestSizeLimitExceeded, "InputBase64",
			fmt.Sprintf("decoded input exceeds %d bytes", lim.MaxInputBytes))
	}
	doc, err := enc.DecodeString(*b64)
	if err != nil {
		return invalid(CodeInvalidBase64Encode, "InputBase64", "must be standard padded base64")
	}
	if len(doc) > lim.MaxInputBytes {
		return invalid(CodeRequestSizeLimitExceeded, "InputBase64",
			fmt.Sprintf("decoded input exceeds %d bytes", lim.MaxInputBytes))
	}
	if !utf8.Valid(doc) || !json.Valid(doc) {
		return invalid(CodeInvalidInputJSONFormat, "InputBase64", "decoded input must be a JSON document")
	}
	return nil
}

func checkEmails(emails []string, lim Limits) error {
	if len(emails) > lim.MaxEmails {
		return invalid(CodeEmailCountLimitExceeded, "EmailForNotification",
			fmt.Sprintf("must have at most %d addresses", lim.MaxEmails))
	}
	for _, e := range emails {
		if !looksLikeEmail(e) {
			return invalid(CodeInvalidEmailFormat, "EmailForNotification", "each element must be a bare e-mail address")
		}
	}
	return nil
}

// looksLikeEmail accepts a bare addr-spec (local@domain, no display name,
// no angle brackets) with a dotted domain.
func looksLikeEmail(s string) bool {
	if s == "" || len(s) > maxEmailBytes || strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}) {
		return false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return false
	}
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || strings.ContainsRune(domain, '@') {
		return false
	}
	labels := strings.Split(domain, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" {
			return false
		}
	}
	return true
}
