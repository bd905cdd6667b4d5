package samplesheet

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

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

// jsonFile is one JSON input being read: its locations and syntax errors.
type jsonFile struct {
	data  []byte
	lines *lineCounter
	loc   Location // the whole file
}

// at is the file's location with the line of byte offset off.
func (f *jsonFile) at(off int) Location {
	l := f.loc
	l.Line = f.lines.at(off)
	return l
}

// syntax describes a decode error that happened reading from offset base.
func (f *jsonFile) syntax(base int, err error) []*Error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return []*Error{{Loc: f.at(len(f.data)), Code: CodeSyntax, Reason: "unexpected end of input: an unclosed object, array or string"}}
	}
	return []*Error{{Loc: f.at(skipSpaceComma(f.data, base+int(syntaxOffset(err)))), Code: CodeSyntax, Reason: "invalid JSON syntax"}}
}

// parseJSON reads one request object or an array of them.
func (p *Parser) parseJSON(name string, data []byte) ([]Request, []*Error) {
	f := &jsonFile{data: data, lines: &lineCounter{data: data}, loc: Location{File: name, Index: -1, kind: FormatJSON}}
	start := skipSpace(data, 0)
	if start == len(data) {
		return nil, []*Error{{Loc: f.loc, Code: CodeSyntax, Reason: "the file is empty; want a JSON object or an array of objects"}}
	}
	if data[start] != '[' {
		return p.parseJSONObject(f, start)
	}
	return p.parseJSONArray(f)
}

// parseJSONObject reads a file holding a single request starting at start;
// the item decoder reports anything that is not an object.
func (p *Parser) parseJSONObject(f *jsonFile, start int) ([]Request, []*Error) {
	dec := json.NewDecoder(bytes.NewReader(f.data[start:]))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, f.syntax(start, err)
	}
	if rest := skipSpace(f.data, start+int(dec.InputOffset())); rest != len(f.data) {
		return nil, []*Error{{Loc: f.at(rest), Code: CodeSyntax, Reason: "data after the JSON value; use an array or JSON Lines for several requests"}}
	}
	if err := p.tooMany(f.loc); err != nil {
		return nil, []*Error{err}
	}
	r, err := p.jsonItem(f.loc, raw)
	if err != nil {
		return nil, []*Error{err}
	}
	return []Request{r}, nil
}

// parseJSONArray reads an array of requests; a syntax error stops it, an
// invalid request does not.
func (p *Parser) parseJSONArray(f *jsonFile) ([]Request, []*Error) {
	dec := json.NewDecoder(bytes.NewReader(f.data))
	if _, err := dec.Token(); err != nil { // '['
		return nil, f.syntax(0, err)
	}
	var reqs []Request
	var errs []*Error
	for i := 0; dec.More(); i++ {
		off := skipSpaceComma(f.data, int(dec.InputOffset()))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return reqs, append(errs, f.syntax(0, err)...)
		}
		loc := Location{File: f.loc.File, Index: i, Line: f.lines.at(off), kind: FormatJSON}
		if err := p.tooMany(loc); err != nil {
			return reqs, append(errs, err)
		}
		if r, err := p.jsonItem(loc, raw); err != nil {
			errs = append(errs, err)
		} else {
			reqs = append(reqs, r)
		}
	}
	if _, err := dec.Token(); err != nil { // ']'
		return reqs, append(errs, f.syntax(0, err)...)
	}
	if rest := skipSpace(f.data, int(dec.InputOffset())); rest != len(f.data) {
		errs = append(errs, &Error{Loc: f.at(rest), Code: CodeSyntax, Reason: "data after the JSON array"})
	}
	if len(reqs) == 0 && len(errs) == 0 {
		errs = append(errs, &Error{Loc: f.loc, Code: CodeSyntax, Reason: "the array holds no request"})
	}
	return reqs, errs
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
func (p *Parser) parseJSONL(name string, data []byte) ([]Request, []*Error) {
	var reqs []Request
	var errs []*Error
	n := 0
	for line := range bytes.Lines(data) {
		n++
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		loc := Location{File: name, Index: -1, Line: n, kind: FormatJSONL}
		if err := p.tooMany(loc); err != nil {
			return reqs, append(errs, err)
		}
		if !json.Valid(line) {
			errs = append(errs, &Error{Loc: loc, Code: CodeSyntax, Reason: "the line is not one JSON value"})
			continue
		}
		if r, err := p.jsonItem(loc, line); err != nil {
			errs = append(errs, err)
		} else {
			reqs = append(reqs, r)
		}
	}
	if n == 0 || (len(reqs) == 0 && len(errs) == 0) {
		errs = append(errs, &Error{Loc: Location{File: name, Index: -1, kind: FormatJSONL}, Code: CodeSyntax, Reason: "the file holds no request"})
	}
	return reqs, errs
}
