package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/omicsq/omicsq/client"
	"io"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/omicsq/omicsq/internal/submit"
)

// format is an input format.
type format string

const (
	formatAuto  format = "auto"
	formatJSON  format = "json"
	formatJSONL format = "jsonl"
	formatCSV   format = "csv"
)

func parseFormat(s string) (format, error) {
	switch f := format(strings.ToLower(s)); f {
	case formatAuto, formatJSON, formatJSONL, formatCSV:
		return f, nil
	}
	return "", fmt.Errorf("must be auto, json, jsonl or csv")
}

// Local error codes for problems that are not API validation errors. API
// rules keep the API's own codes (submit.ValidationError.Code).
const (
	codeSyntax         = "InvalidSyntax"         // not parseable JSON / JSONL / CSV
	codeInvalidItem    = "InvalidItem"           // not an object, or a malformed envelope
	codeInvalidKey     = "InvalidIdempotencyKey" // the key breaks client.ValidateKey
	codeDuplicateKey   = "DuplicateKey"          // same key, different request
	codeDuplicateName  = "DuplicateName"         // same Name and project, different key
	codeInvalidCell    = "InvalidCell"           // a CSV cell of the wrong type
	codeInputJSONFile  = "InputJsonFile"         // input_json unreadable or not JSON
	codeInternalCanon  = "CanonicalFormInvalid"  // re-encoding broke validation (a bug)
	codeTooMany        = "TooManyRequests"       // more than --max-requests in one run
	envelopeKeyField   = "key"
	envelopeBodyField  = "request"
	csvKeyColumn       = "key"
	csvInputJSONColumn = "input_json"
)

// location says where a request came from. Its String form has no spaces,
// so output lines split on whitespace: file (a single JSON object),
// file[3] (JSON array index, from 0), file:7 (JSON Lines line) or
// file:row7 (CSV row as a spreadsheet numbers it: the header is row 1).
type location struct {
	File  string
	Index int // JSON array index; -1 when not in an array
	Line  int // 1-based line where the item starts; 0 when unknown
	Row   int // CSV row; 0 when not CSV
	kind  format
}

func (l location) String() string {
	switch {
	case l.kind == formatCSV && l.Row > 0:
		return fmt.Sprintf("%s:row%d", l.File, l.Row)
	case l.kind == formatJSONL && l.Line > 0:
		return fmt.Sprintf("%s:%d", l.File, l.Line)
	case l.Index >= 0:
		return fmt.Sprintf("%s[%d]", l.File, l.Index)
	case l.kind == formatJSON:
		return l.File
	case l.Line > 0:
		return fmt.Sprintf("%s:%d", l.File, l.Line)
	}
	return l.File
}

// detail adds the line of a JSON array item, which String leaves out.
func (l location) detail() string {
	if l.kind == formatJSON && l.Line > 0 {
		return fmt.Sprintf("%s (line %d)", l, l.Line)
	}
	return l.String()
}

// item is one validated request, ready to publish.
type item struct {
	Loc      location
	Key      string
	KeyGiven bool
	// Body is the canonical JSON: the typed request re-marshalled.
	Body []byte
	Req  *submit.RunApplicationRequest
}

// itemError is one rejected request (or an unreadable file). It names the
// place, the field and the rule, never a value.
type itemError struct {
	Loc    location
	Field  string
	Code   string
	Reason string
}

func (e *itemError) Error() string {
	var b strings.Builder
	b.WriteString(e.Loc.detail())
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	if e.Code != "" {
		b.WriteString(e.Code)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// csvDefaults fill ApplicationId, EnvironmentId and ProjectId in CSV rows
// that lack the column or leave the cell empty.
type csvDefaults struct {
	ApplicationID, EnvironmentID, ProjectID string
}

// parser turns input files into validated items.
type parser struct {
	lim      submit.Limits
	defaults csvDefaults
	// readFile reads an input_json file named in a CSV row.
	readFile func(path string) ([]byte, error)
	// maxRequests bounds the requests read in one run, all files together
	// (0: no bound); seen counts them.
	maxRequests, seen int
}

// tooMany counts one more request and, past maxRequests, returns the error
// that stops reading.
func (p *parser) tooMany(loc location) *itemError {
	p.seen++
	if p.maxRequests > 0 && p.seen > p.maxRequests {
		return &itemError{Loc: loc, Code: codeTooMany,
			Reason: fmt.Sprintf("more than %d requests in one run (--max-requests); split the input", p.maxRequests)}
	}
	return nil
}

// parse reads one input; name is how locations name it ("stdin" for -).
// dir is the directory input_json paths are relative to.
func (p *parser) parse(name, dir string, data []byte, f format) ([]item, []*itemError) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if f == formatAuto {
		f = detectFormat(name, data)
	}
	switch f {
	case formatJSON:
		return p.parseJSON(name, data)
	case formatJSONL:
		return p.parseJSONL(name, data)
	default:
		return p.parseCSV(name, dir, data)
	}
}

// detectFormat picks the format from the file extension, else from the
// content: '[' is a JSON array; '{' is one JSON object if nothing but
// whitespace follows it, JSON Lines otherwise; anything else is CSV.
func detectFormat(name string, data []byte) format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return formatJSON
	case ".jsonl", ".ndjson":
		return formatJSONL
	case ".csv":
		return formatCSV
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return formatJSONL
	}
	switch trimmed[0] {
	case '[':
		return formatJSON
	case '{':
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return formatJSONL
		}
		if len(bytes.TrimSpace(trimmed[dec.InputOffset():])) == 0 {
			return formatJSON
		}
		return formatJSONL
	}
	return formatCSV
}

// lineCounter maps byte offsets to 1-based line numbers; offsets must be
// asked in increasing order.
type lineCounter struct {
	data []byte
	pos  int
	line int
}

func (c *lineCounter) at(off int) int {
	off = min(max(off, 0), len(c.data))
	if off < c.pos {
		c.pos, c.line = 0, 1
	}
	if c.line == 0 {
		c.line = 1
	}
	c.line += bytes.Count(c.data[c.pos:off], []byte{'\n'})
	c.pos = off
	return c.line
}

// parseJSON reads one request object or an array of them.
func (p *parser) parseJSON(name string, data []byte) ([]item, []*itemError) {
	lines := &lineCounter{data: data}
	fileLoc := location{File: name, Index: -1, kind: formatJSON}
	syntax := func(base int, err error) []*itemError {
		l := fileLoc
		reason := "invalid JSON syntax"
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			l.Line = lines.at(len(data))
			reason = "unexpected end of input: an unclosed object, array or string"
		} else {
			l.Line = lines.at(skipSpaceComma(data, base+int(syntaxOffset(err))))
		}
		return []*itemError{{Loc: l, Code: codeSyntax, Reason: reason}}
	}
	start := skipSpace(data, 0)
	if start == len(data) {
		return nil, []*itemError{{Loc: fileLoc, Code: codeSyntax, Reason: "the file is empty; want a JSON object or an array of objects"}}
	}
	if data[start] != '[' {
		// A single object; the item decoder reports anything else.
		end := skipSpace(data, start)
		dec := json.NewDecoder(bytes.NewReader(data[end:]))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, syntax(end, err)
		}
		if rest := skipSpace(data, end+int(dec.InputOffset())); rest != len(data) {
			l := fileLoc
			l.Line = lines.at(rest)
			return nil, []*itemError{{Loc: l, Code: codeSyntax, Reason: "data after the JSON value; use an array or JSON Lines for several requests"}}
		}
		if ierr := p.tooMany(fileLoc); ierr != nil {
			return nil, []*itemError{ierr}
		}
		it, ierr := p.item(fileLoc, raw)
		if ierr != nil {
			return nil, []*itemError{ierr}
		}
		return []item{it}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // '['
		return nil, syntax(0, err)
	}
	var items []item
	var errs []*itemError
	for i := 0; dec.More(); i++ {
		off := skipSpaceComma(data, int(dec.InputOffset()))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			errs = append(errs, syntax(0, err)...)
			return items, errs
		}
		loc := location{File: name, Index: i, Line: lines.at(off), kind: formatJSON}
		if ierr := p.tooMany(loc); ierr != nil {
			return items, append(errs, ierr)
		}
		if it, ierr := p.item(loc, raw); ierr != nil {
			errs = append(errs, ierr)
		} else {
			items = append(items, it)
		}
	}
	if _, err := dec.Token(); err != nil { // ']'
		return items, append(errs, syntax(0, err)...)
	}
	if rest := skipSpace(data, int(dec.InputOffset())); rest != len(data) {
		l := fileLoc
		l.Line = lines.at(rest)
		errs = append(errs, &itemError{Loc: l, Code: codeSyntax, Reason: "data after the JSON array"})
	}
	if len(items) == 0 && len(errs) == 0 {
		errs = append(errs, &itemError{Loc: fileLoc, Code: codeSyntax, Reason: "the array holds no request"})
	}
	return items, errs
}

// syntaxOffset is where a decode error happened, if encoding/json says.
func syntaxOffset(err error) int64 {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return se.Offset
	}
	return 0
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	return i
}

func skipSpaceComma(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n' || data[i] == ',') {
		i++
	}
	return i
}

// parseJSONL reads one request per line; blank lines are skipped.
func (p *parser) parseJSONL(name string, data []byte) ([]item, []*itemError) {
	var items []item
	var errs []*itemError
	n := 0
	for line := range bytes.Lines(data) {
		n++
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		loc := location{File: name, Index: -1, Line: n, kind: formatJSONL}
		if ierr := p.tooMany(loc); ierr != nil {
			return items, append(errs, ierr)
		}
		if !json.Valid(line) {
			errs = append(errs, &itemError{Loc: loc, Code: codeSyntax, Reason: "the line is not one JSON value"})
			continue
		}
		if it, ierr := p.item(loc, line); ierr != nil {
			errs = append(errs, ierr)
		} else {
			items = append(items, it)
		}
	}
	if n == 0 || (len(items) == 0 && len(errs) == 0) {
		errs = append(errs, &itemError{Loc: location{File: name, Index: -1, kind: formatJSONL}, Code: codeSyntax, Reason: "the file holds no request"})
	}
	return items, errs
}

// item validates one JSON request: a plain RunApplication body, or an
// envelope {"key": "...", "request": {...}}. The API defines no field
// named "request", so an object with that key is always an envelope.
func (p *parser) item(loc location, raw []byte) (item, *itemError) {
	fail := func(field, code, reason string) (item, *itemError) {
		return item{}, &itemError{Loc: loc, Field: field, Code: code, Reason: reason}
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return fail("", codeInvalidItem, "each request must be a JSON object")
	}
	body, key, keyGiven := json.RawMessage(raw), "", false
	if reqRaw, ok := top[envelopeBodyField]; ok {
		for k := range top {
			if k != envelopeKeyField && k != envelopeBodyField {
				return fail(submit.SafeFieldName(k), codeInvalidItem, `an envelope holds only "key" and "request"`)
			}
		}
		body = reqRaw
		if kr, ok := top[envelopeKeyField]; ok && string(kr) != "null" {
			if err := json.Unmarshal(kr, &key); err != nil {
				return fail(envelopeKeyField, codeInvalidKey, "the key must be a JSON string")
			}
			keyGiven = true
		}
	}
	return p.finish(loc, body, key, keyGiven)
}

// finish decodes and validates body strictly, re-encodes it canonically,
// validates the canonical form, and settles the key.
func (p *parser) finish(loc location, body []byte, key string, keyGiven bool) (item, *itemError) {
	req, err := submit.DecodeRunApplication(body, p.lim)
	if err != nil {
		return item{}, validationItemError(loc, err)
	}
	canonical, err := json.Marshal(req)
	if err != nil {
		return item{}, &itemError{Loc: loc, Code: codeInternalCanon, Reason: "the request cannot be re-encoded"}
	}
	if _, err := submit.DecodeRunApplication(canonical, p.lim); err != nil {
		ie := validationItemError(loc, err)
		ie.Reason = "canonical form: " + ie.Reason
		return item{}, ie
	}
	if keyGiven {
		if err := client.ValidateKey(key); err != nil {
			return item{}, &itemError{Loc: loc, Field: envelopeKeyField, Code: codeInvalidKey, Reason: err.Error()}
		}
	} else {
		key = client.DeriveKey(canonical)
	}
	return item{Loc: loc, Key: key, KeyGiven: keyGiven, Body: canonical, Req: req}, nil
}

func validationItemError(loc location, err error) *itemError {
	if ve, ok := errors.AsType[*submit.ValidationError](err); ok {
		return &itemError{Loc: loc, Field: ve.Field, Code: ve.Code, Reason: ve.Reason}
	}
	return &itemError{Loc: loc, Code: submit.CodeInvalidParameter, Reason: "the request is invalid"}
}

// crossCheck rejects, across every input of a run, a key given twice for
// different requests, and two requests (different keys) with the same Name
// in the same project: the API would refuse the second with DuplicateName,
// and the worker could then mistake the first run group for its own.
// Exact repeats (same key, same body) are allowed; JetStream drops them.
func crossCheck(items []item) ([]item, []*itemError) {
	type seen struct {
		loc  location
		body []byte
		key  string
	}
	byKey := make(map[string]seen, len(items))
	byName := make(map[[2]string]seen, len(items))
	var ok []item
	var errs []*itemError
	for _, it := range items {
		if first, dup := byKey[it.Key]; dup {
			if !bytes.Equal(first.body, it.Body) {
				errs = append(errs, &itemError{Loc: it.Loc, Field: envelopeKeyField, Code: codeDuplicateKey,
					Reason: "the same key was given to a different request at " + first.loc.String()})
				continue
			}
			ok = append(ok, it)
			continue
		}
		project := ""
		if it.Req.ProjectId != nil {
			project = *it.Req.ProjectId
		}
		nk := [2]string{project, it.Req.Name}
		if first, dup := byName[nk]; dup && first.key != it.Key {
			errs = append(errs, &itemError{Loc: it.Loc, Field: "Name", Code: codeDuplicateName,
				Reason: "the request at " + first.loc.String() + " uses the same Name in the same project; run-group names must be unique"})
			continue
		}
		byKey[it.Key] = seen{loc: it.Loc, body: it.Body, key: it.Key}
		byName[nk] = seen{loc: it.Loc, body: it.Body, key: it.Key}
		ok = append(ok, it)
	}
	return ok, errs
}

// fieldKind is the JSON type of a request field.
type fieldKind int

const (
	kindString fieldKind = iota + 1
	kindBool
	kindUint
	kindList
	kindObject
)

// requestFields maps every settable request field path (Name,
// Option.FailureMode, NFOption.Config, ...) to its kind, derived from the
// submit types' JSON tags so it cannot drift from them.
var requestFields = func() map[string]fieldKind {
	m := map[string]fieldKind{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			path := prefix + name
			switch ft.Kind() {
			case reflect.String:
				m[path] = kindString
			case reflect.Bool:
				m[path] = kindBool
			case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				m[path] = kindUint
			case reflect.Slice:
				m[path] = kindList
			case reflect.Struct:
				m[path] = kindObject
				walk(path+".", ft)
			}
		}
	}
	walk("", reflect.TypeFor[submit.RunApplicationRequest]())
	return m
}()
