package samplesheet

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/omicsq/omicsq/internal/submit"
)

// Columns that are not request fields.
const (
	csvKeyColumn       = "key"
	csvInputJSONColumn = "input_json"
	csvPriorityColumn  = "priority"
	csvFairnessColumn  = "fairness_key"
)

// csvAliases are short column names for RunOption fields.
var csvAliases = map[string]string{
	"FailureMode":    "Option.FailureMode",
	"UseCallCache":   "Option.UseCallCache",
	"UseErrorOnHold": "Option.UseErrorOnHold",
}

// csvColumn is what one header cell maps to.
type csvColumn struct {
	name string // as written in the header
	path string // request field path, or csvKeyColumn / csvInputJSONColumn
	kind submit.FieldKind
}

// csvHeader maps the header row to columns. Columns are API field names
// (Name, ApplicationId, ...), Option.X / NFOption.X for nested fields, the
// aliases FailureMode, UseCallCache and UseErrorOnHold, key and
// input_json. Names are case-sensitive, like the API's.
func csvHeader(header []string) ([]csvColumn, error) {
	cols := make([]csvColumn, len(header))
	seen := map[string]string{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		path := h
		if a, ok := csvAliases[h]; ok {
			path = a
		}
		var kind submit.FieldKind
		switch path {
		case csvKeyColumn, csvInputJSONColumn, csvPriorityColumn, csvFairnessColumn:
		case "":
			return nil, fmt.Errorf("header: column %d has no name", i+1)
		default:
			k, ok := submit.RequestFields[path]
			if !ok {
				return nil, fmt.Errorf("header: column %q is not a RunApplication field, key or input_json (names are case-sensitive)", submit.SafeFieldName(h))
			}
			if k == submit.KindObject {
				return nil, fmt.Errorf("header: column %q is an object; use one column per field, e.g. %s.FailureMode", submit.SafeFieldName(h), h)
			}
			kind = k
		}
		if prev, dup := seen[path]; dup {
			return nil, fmt.Errorf("header: columns %q and %q set the same field", submit.SafeFieldName(prev), submit.SafeFieldName(h))
		}
		seen[path] = h
		cols[i] = csvColumn{name: h, path: path, kind: kind}
	}
	return cols, nil
}

// parseCSV reads a sample sheet: a header row, then one run per row. Cells
// are trimmed; an empty cell means the field is absent; rows whose cells
// are all empty are skipped.
func (p *Parser) parseCSV(name, dir string, data []byte) ([]Request, []*Error) {
	fileLoc := Location{File: name, Index: -1, kind: FormatCSV}
	r := csv.NewReader(bytes.NewReader(data))
	r.ReuseRecord = false
	header, err := r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []*Error{{Loc: fileLoc, Code: CodeSyntax, Reason: "the file is empty; want a header row and one row per run"}}
		}
		return nil, []*Error{{Loc: csvErrLoc(fileLoc, 1, err), Code: CodeSyntax, Reason: csvReason(err)}}
	}
	cols, err := csvHeader(header)
	if err != nil {
		l := fileLoc
		l.Row = 1
		return nil, []*Error{{Loc: l, Code: CodeSyntax, Reason: err.Error()}}
	}
	var reqs []Request
	var errs []*Error
	for row := 2; ; row++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		loc := Location{File: name, Index: -1, Row: row, kind: FormatCSV}
		if len(rec) > 0 {
			// FieldPos panics unless the last Read returned a record.
			loc.Line, _ = r.FieldPos(0)
		}
		if err != nil {
			pe, ok := errors.AsType[*csv.ParseError](err)
			if ok && errors.Is(pe.Err, csv.ErrFieldCount) {
				errs = append(errs, &Error{Loc: loc, Code: CodeSyntax,
					Reason: fmt.Sprintf("the row has %d cells, the header %d", len(rec), len(cols))})
				continue
			}
			// Quoting errors leave the reader out of step: stop here.
			errs = append(errs, &Error{Loc: csvErrLoc(fileLoc, row, err), Code: CodeSyntax, Reason: csvReason(err)})
			break
		}
		if allEmpty(rec) {
			continue
		}
		if err := p.tooMany(loc); err != nil {
			errs = append(errs, err)
			break
		}
		if req, err := p.csvRow(loc, dir, cols, rec); err != nil {
			errs = append(errs, err)
		} else {
			reqs = append(reqs, req)
		}
	}
	if len(reqs) == 0 && len(errs) == 0 {
		errs = append(errs, &Error{Loc: fileLoc, Code: CodeSyntax, Reason: "the file has a header but no rows"})
	}
	return reqs, errs
}

func csvErrLoc(l Location, row int, err error) Location {
	l.Row = row
	if pe, ok := errors.AsType[*csv.ParseError](err); ok {
		l.Line = pe.StartLine
	}
	return l
}

// csvReason describes a CSV syntax error without quoting the input.
func csvReason(err error) string {
	pe, ok := errors.AsType[*csv.ParseError](err)
	if !ok {
		return "invalid CSV"
	}
	return fmt.Sprintf("invalid CSV at line %d, column %d: %v", pe.Line, pe.Column, pe.Err)
}

func allEmpty(rec []string) bool {
	for _, c := range rec {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}

// csvRow builds the request JSON of one row, then validates it like any
// other request.
func (p *Parser) csvRow(loc Location, dir string, cols []csvColumn, rec []string) (Request, *Error) {
	fail := func(field, code, reason string) (Request, *Error) {
		return Request{}, &Error{Loc: loc, Field: field, Code: code, Reason: reason}
	}
	top := map[string]any{}
	nested := map[string]map[string]any{}
	key, keyGiven, inputPath, prio, fairness := "", false, "", "", ""
	for i, c := range cols {
		cell := strings.TrimSpace(rec[i])
		if cell == "" {
			continue
		}
		switch c.path {
		case csvKeyColumn:
			key, keyGiven = cell, true
			continue
		case csvInputJSONColumn:
			inputPath = cell
			continue
		case csvPriorityColumn:
			prio = cell
			continue
		case csvFairnessColumn:
			fairness = cell
			continue
		}
		v, reason := cellValue(c.kind, cell)
		if reason != "" {
			return fail(c.name, CodeInvalidCell, reason)
		}
		if parent, field, ok := strings.Cut(c.path, "."); ok {
			if nested[parent] == nil {
				nested[parent] = map[string]any{}
			}
			nested[parent][field] = v
		} else {
			top[c.path] = v
		}
	}
	for parent, m := range nested {
		top[parent] = m
	}
	p.applyDefaults(top)
	if inputPath != "" {
		if _, ok := top["InputBase64"]; ok {
			return fail(csvInputJSONColumn, CodeInputJSONFile, "input_json and InputBase64 are mutually exclusive")
		}
		b64, reason := p.inputJSON(dir, inputPath)
		if reason != "" {
			return fail(csvInputJSONColumn, CodeInputJSONFile, reason)
		}
		top["InputBase64"] = b64
	}
	body, err := json.Marshal(top)
	if err != nil {
		return fail("", CodeInvalidCell, "the row cannot be encoded as JSON")
	}
	r, e := Validate(p.opts.Limits, loc, body, key, keyGiven)
	if e != nil {
		return r, e
	}
	return withLane(r, prio, fairness)
}

// cellValue converts a non-empty cell to the JSON value of a field of kind;
// the reason it returns on failure never quotes the cell.
func cellValue(kind submit.FieldKind, cell string) (any, string) {
	switch kind {
	case submit.KindBool:
		b, err := strconv.ParseBool(cell)
		if err != nil {
			return nil, "must be true or false"
		}
		return b, ""
	case submit.KindUint:
		n, err := strconv.ParseUint(cell, 10, 64)
		if err != nil {
			return nil, "must be a non-negative integer"
		}
		return n, ""
	case submit.KindList:
		var list []string
		for e := range strings.SplitSeq(cell, ";") {
			if e = strings.TrimSpace(e); e != "" {
				list = append(list, e)
			}
		}
		return list, ""
	case submit.KindString:
		return cell, ""
	}
	return nil, ""
}

// applyDefaults fills the fields of Options.Defaults a row left out.
func (p *Parser) applyDefaults(top map[string]any) {
	d := p.opts.Defaults
	for field, def := range map[string]string{
		"ApplicationId": d.ApplicationID,
		"EnvironmentId": d.EnvironmentID,
		"ProjectId":     d.ProjectID,
	} {
		if _, ok := top[field]; !ok && def != "" {
			top[field] = def
		}
	}
}

// inputJSON reads an input_json file (relative to dir), checks it is one
// JSON document within the input limit, and returns it base64-encoded.
// The reason it returns on failure never names the path, which often
// carries a sample identifier; the row number locates it.
func (p *Parser) inputJSON(dir, path string) (string, string) {
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	if p.opts.ReadFile == nil {
		return "", "cannot read the file: input files are not available here"
	}
	data, err := p.opts.ReadFile(path)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			return "", "cannot read the file: " + pe.Err.Error()
		}
		return "", "cannot read the file"
	}
	// What base64 of the file can occupy in a message of the size limit.
	maxInput := p.opts.Limits.MaxRequestBytes
	if maxInput <= 0 {
		maxInput = submit.DefaultLimits().MaxRequestBytes
	}
	maxInput = maxInput / 4 * 3
	if len(data) > maxInput {
		return "", fmt.Sprintf("the file exceeds %d bytes", maxInput)
	}
	if !json.Valid(data) {
		return "", "the file is not a JSON document"
	}
	return base64.StdEncoding.EncodeToString(data), ""
}
