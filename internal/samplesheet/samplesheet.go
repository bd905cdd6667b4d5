// Package samplesheet turns the files a producer hands to omicsq (JSON, JSON
// Lines or a CSV sample sheet) into validated RunApplication requests, each
// in its canonical form and under its idempotency key. Every rejection names
// where it came from (file, array index, line or CSV row), the field and the
// rule, and never a value from the input: sample sheets carry patient and
// sample identifiers. docs/enqueue.md describes the formats.
package samplesheet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
)

// Format is an input format.
type Format string

// Input formats. FormatAuto picks one per file (see DetectFormat).
const (
	FormatAuto  Format = "auto"
	FormatJSON  Format = "json"
	FormatJSONL Format = "jsonl"
	FormatCSV   Format = "csv"
)

// ParseFormat reads a format name, case-insensitively.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case FormatAuto, FormatJSON, FormatJSONL, FormatCSV:
		return f, nil
	}
	return "", errors.New("must be auto, json, jsonl or csv")
}

// Codes of the problems that are not API validation errors; API rules keep
// the API's own codes (submit.ValidationError.Code).
const (
	CodeSyntax        = "InvalidSyntax"        // not parseable JSON / JSONL / CSV
	CodeInvalidItem   = "InvalidItem"          // not an object, or a malformed envelope
	CodeInvalidKey    = client.CodeInvalidKey  // the key breaks client.ValidateKey
	CodeDuplicateKey  = "DuplicateKey"         // same key, different request
	CodeInvalidLane   = client.CodeInvalidLane // an unknown priority or an oversized fairness key
	CodeDuplicateName = "DuplicateName"        // same Name and project, different key
	CodeInvalidCell   = "InvalidCell"          // a CSV cell of the wrong type
	CodeInputJSONFile = "InputJsonFile"        // input_json unreadable or not JSON
	CodeCanonical     = "CanonicalFormInvalid" // re-encoding broke validation (a bug)
	CodeTooMany       = "TooManyRequests"      // more than Options.MaxRequests in one run
)

// Location says where a request came from. Its String form has no spaces,
// so output lines split on whitespace: file (a single JSON object),
// file[3] (JSON array index, from 0), file:7 (JSON Lines line) or
// file:row7 (CSV row as a spreadsheet numbers it: the header is row 1).
type Location struct {
	File  string
	Index int // JSON array index; -1 when not in an array
	Line  int // 1-based line where the item starts; 0 when unknown
	Row   int // CSV row; 0 when not CSV
	kind  Format
}

func (l Location) String() string {
	switch {
	case l.kind == FormatCSV && l.Row > 0:
		return fmt.Sprintf("%s:row%d", l.File, l.Row)
	case l.kind == FormatJSONL && l.Line > 0:
		return fmt.Sprintf("%s:%d", l.File, l.Line)
	case l.Index >= 0:
		return fmt.Sprintf("%s[%d]", l.File, l.Index)
	case l.kind == FormatJSON:
		return l.File
	case l.Line > 0:
		return fmt.Sprintf("%s:%d", l.File, l.Line)
	}
	return l.File
}

// Detail is String plus the line of a JSON array item, which String leaves
// out; error messages start with it.
func (l Location) Detail() string {
	if l.kind == FormatJSON && l.Line > 0 {
		return fmt.Sprintf("%s (line %d)", l, l.Line)
	}
	return l.String()
}

// Request is one validated request, ready to publish.
type Request struct {
	Loc      Location
	Key      string
	KeyGiven bool // false: Key is derived from Body
	// Body is the canonical JSON: the typed request re-marshalled.
	Body           []byte
	RunApplication *submit.RunApplicationRequest
	// Priority and FairnessKey are the row's lane and fairness key (the
	// priority and fairness_key columns or envelope fields); blank: not
	// given, the enqueue flags or the defaults apply.
	Priority    client.Priority
	FairnessKey string
}

// Error is one rejected request (or an unreadable file). It names the
// place, the field and the rule, never a value.
type Error struct {
	Loc    Location
	Field  string
	Code   string
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Loc.Detail())
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

// Defaults fill ApplicationId, EnvironmentId and ProjectId in CSV rows that
// lack the column or leave the cell empty.
type Defaults struct {
	ApplicationID, EnvironmentID, ProjectID string
}

// Options say how inputs are read.
type Options struct {
	Limits submit.Limits
	// MaxRequests bounds the requests read by one Parser, all inputs
	// together; 0: no bound.
	MaxRequests int
	Defaults    Defaults
	// ReadFile reads the input_json file a CSV row names; nil refuses them.
	ReadFile func(path string) ([]byte, error)
}

// Parser reads the inputs of one run: Options.MaxRequests spans all of them.
type Parser struct {
	opts Options
	seen int
}

// NewParser returns a Parser for one run.
func NewParser(opts Options) *Parser { return &Parser{opts: opts} }

// Parse reads one input; name is how locations name it ("stdin" for
// standard input) and dir is the directory input_json paths are relative
// to. A UTF-8 byte-order mark is ignored.
func (p *Parser) Parse(name, dir string, data []byte, f Format) ([]Request, []*Error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if f == FormatAuto {
		f = DetectFormat(name, data)
	}
	switch f {
	case FormatJSON:
		return p.parseJSON(name, data)
	case FormatJSONL:
		return p.parseJSONL(name, data)
	default:
		return p.parseCSV(name, dir, data)
	}
}

// tooMany counts one more request and, past MaxRequests, returns the error
// that stops reading.
func (p *Parser) tooMany(loc Location) *Error {
	p.seen++
	if bound := p.opts.MaxRequests; bound > 0 && p.seen > bound {
		return &Error{Loc: loc, Code: CodeTooMany,
			Reason: fmt.Sprintf("more than %d requests in one run (--max-requests); split the input", bound)}
	}
	return nil
}

// DetectFormat picks the format from the file extension, else from the
// content: '[' is a JSON array; '{' is one JSON object if nothing but
// whitespace follows it, JSON Lines otherwise; anything else is CSV.
func DetectFormat(name string, data []byte) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return FormatJSON
	case ".jsonl", ".ndjson":
		return FormatJSONL
	case ".csv":
		return FormatCSV
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return FormatJSONL
	}
	switch trimmed[0] {
	case '[':
		return FormatJSON
	case '{':
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return FormatJSONL
		}
		if len(bytes.TrimSpace(trimmed[dec.InputOffset():])) == 0 {
			return FormatJSON
		}
		return FormatJSONL
	}
	return FormatCSV
}
