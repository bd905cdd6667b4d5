package samplesheet

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/submit"
)

// The envelope that adds an idempotency key to a JSON request.
const (
	envelopeKeyField      = "key"
	envelopeBodyField     = "request"
	envelopePriorityField = "priority"
	envelopeFairnessField = "fairness_key"
)

// jsonItem validates one JSON request: a plain RunApplication body, or an
// envelope {"key": "...", "request": {...}}. The API defines no field
// named "request", so an object with that key is always an envelope.
func (p *Parser) jsonItem(loc Location, raw []byte) (Request, *Error) {
	fail := func(field, code, reason string) (Request, *Error) {
		return Request{}, &Error{Loc: loc, Field: field, Code: code, Reason: reason}
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return fail("", CodeInvalidItem, "each request must be a JSON object")
	}
	body, key, keyGiven := json.RawMessage(raw), "", false
	var prio, fairness string
	if reqRaw, ok := top[envelopeBodyField]; ok {
		for k, v := range top {
			switch k {
			case envelopeKeyField, envelopeBodyField:
			case envelopePriorityField, envelopeFairnessField:
				var s string
				if err := json.Unmarshal(v, &s); err != nil && string(v) != "null" {
					return fail(k, CodeInvalidLane, "must be a JSON string")
				}
				if k == envelopePriorityField {
					prio = s
				} else {
					fairness = s
				}
			default:
				return fail(submit.SafeFieldName(k), CodeInvalidItem, `an envelope holds only "key" and "request"`)
			}
		}
		body = reqRaw
		if kr, ok := top[envelopeKeyField]; ok && string(kr) != "null" {
			if err := json.Unmarshal(kr, &key); err != nil {
				return fail(envelopeKeyField, CodeInvalidKey, "the key must be a JSON string")
			}
			keyGiven = true
		}
	}
	r, e := Validate(p.opts.Limits, loc, body, key, keyGiven)
	if e != nil {
		return r, e
	}
	return withLane(r, prio, fairness)
}

// withLane sets r's lane and fairness key from a row's cells or an
// envelope's fields.
func withLane(r Request, prio, fairness string) (Request, *Error) {
	if prio != "" {
		p, err := client.ParsePriority(prio)
		if err != nil {
			return Request{}, &Error{Loc: r.Loc, Field: envelopePriorityField, Code: CodeInvalidLane, Reason: err.Error()}
		}
		r.Priority = p
	}
	if len(fairness) > client.MaxFairnessKeyBytes {
		return Request{}, &Error{Loc: r.Loc, Field: envelopeFairnessField, Code: CodeInvalidLane,
			Reason: "a fairness key is at most 256 bytes"}
	}
	r.FairnessKey = fairness
	return r, nil
}

// Validate checks body with the public client's rules (client.NewRequest:
// strict decoding, the canonical form, the key), so a sample sheet and any
// other producer accept exactly the same requests. key is used when
// keyGiven, else one is derived from the canonical body.
func Validate(lim submit.Limits, loc Location, body []byte, key string, keyGiven bool) (Request, *Error) {
	if keyGiven && key == "" {
		return Request{}, &Error{Loc: loc, Field: envelopeKeyField, Code: CodeInvalidKey, Reason: client.ValidateKey("").Error()}
	}
	r, err := client.NewRequest(body, key, lim.MaxRequestBytes)
	if ie, ok := errors.AsType[*client.InvalidRequestError](err); ok {
		return Request{}, &Error{Loc: loc, Field: ie.Field, Code: ie.Code, Reason: ie.Reason}
	} else if err != nil {
		return Request{}, &Error{Loc: loc, Code: submit.CodeInvalidParameter, Reason: "the request is invalid"}
	}
	// The canonical body has passed strict decoding: a plain unmarshal gives
	// CrossCheck its Name and ProjectId.
	var req submit.RunApplicationRequest
	if err := json.Unmarshal(r.Body, &req); err != nil {
		return Request{}, &Error{Loc: loc, Code: CodeCanonical, Reason: "the request cannot be re-encoded"}
	}
	return Request{Loc: loc, Key: r.Key, KeyGiven: keyGiven, Body: r.Body, RunApplication: &req}, nil
}

// CrossCheck rejects, across every input of a run, a key given twice for
// different requests, and two requests (different keys) with the same Name
// in the same project: the API would refuse the second with DuplicateName,
// and the worker could then mistake the first run group for its own.
// Exact repeats (same key, same body) are kept; JetStream drops them.
func CrossCheck(reqs []Request) ([]Request, []*Error) {
	byKey := make(map[string]Request, len(reqs))
	byName := make(map[[2]string]Request, len(reqs))
	var ok []Request
	var errs []*Error
	for _, r := range reqs {
		if first, dup := byKey[r.Key]; dup {
			if !bytes.Equal(first.Body, r.Body) {
				errs = append(errs, &Error{Loc: r.Loc, Field: envelopeKeyField, Code: CodeDuplicateKey,
					Reason: "the same key was given to a different request at " + first.Loc.String()})
				continue
			}
			ok = append(ok, r)
			continue
		}
		project := ""
		if r.RunApplication.ProjectId != nil {
			project = *r.RunApplication.ProjectId
		}
		name := [2]string{project, r.RunApplication.Name}
		if first, dup := byName[name]; dup && first.Key != r.Key {
			errs = append(errs, &Error{Loc: r.Loc, Field: "Name", Code: CodeDuplicateName,
				Reason: "the request at " + first.Loc.String() + " uses the same Name in the same project; run-group names must be unique"})
			continue
		}
		byKey[r.Key] = r
		byName[name] = r
		ok = append(ok, r)
	}
	return ok, errs
}
