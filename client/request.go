package client

import (
	"encoding/json"
	"errors"

	"github.com/omicsq/omicsq/internal/submit"
)

// DefaultMaxRequestBytes is the largest request body accepted by default: the
// requests stream's message limit.
const DefaultMaxRequestBytes = 1 << 20

// Request is a run request ready to publish: its idempotency key and its
// RunApplication body in canonical form. Make one with NewRequest.
type Request struct {
	Key string
	// Body is the canonical JSON of the request (fields in a fixed order,
	// blanks dropped), the form the key is derived from.
	Body []byte
	// KeyGiven is false when Key was derived from Body.
	KeyGiven bool
	// Batch, when set, is the batch the request belongs to (HeaderBatch):
	// 1 to 128 bytes (MaxBatchBytes) of printable UTF-8 without spaces
	// (ValidateBatch). Publish refuses another value.
	Batch string
	// Priority is the request's lane; blank is routine. A request with
	// neither Priority nor FairnessKey is published to the bare requests
	// subject (the routine lane's shared legacy flow), as before lanes.
	Priority Priority
	// FairnessKey shares the lane fairly among keys (a lab group, a
	// customer); blank means the body's ProjectId.
	FairnessKey string
}

// InvalidRequestError reports a body the API would reject, found before
// publishing. It never holds the offending value: request fields may carry
// patient or sample identifiers.
type InvalidRequestError struct {
	// Code is the Tencent error code the API answers for this mistake (or
	// InvalidIdempotencyKey for an unusable key).
	Code string
	// Field names the offending JSON key, dotted for nested ones
	// ("Option.FailureMode"); empty when the body as a whole is wrong.
	Field string
	// Reason names the rule that was broken.
	Reason string
}

// CodeInvalidKey is the InvalidRequestError code of an unusable key.
const CodeInvalidKey = "InvalidIdempotencyKey"

// CodeInvalidBatch is the InvalidRequestError code of an unusable batch ID.
const CodeInvalidBatch = "InvalidBatchId"

func (e *InvalidRequestError) Error() string {
	if e.Field == "" {
		return "invalid run request: " + e.Code + ": " + e.Reason
	}
	return "invalid run request: " + e.Code + " " + e.Field + ": " + e.Reason
}

// NewRequest checks body against the RunApplication rules the worker
// applies (a JSON object of documented fields with the documented types and
// values), re-encodes it canonically and settles the key: key when given
// (it must pass ValidateKey), else DeriveKey of the canonical body.
// maxBytes bounds the body; 0 means DefaultMaxRequestBytes. The error is an
// *InvalidRequestError.
func NewRequest(body []byte, key string, maxBytes int) (Request, error) {
	lim := submit.Limits{MaxRequestBytes: maxBytes}
	if maxBytes <= 0 {
		lim.MaxRequestBytes = DefaultMaxRequestBytes
	}
	req, err := submit.DecodeRunApplication(body, lim)
	if err != nil {
		return Request{}, invalidRequest(err, "")
	}
	canonical, err := json.Marshal(req)
	if err != nil {
		return Request{}, &InvalidRequestError{Code: submit.CodeInvalidParameter, Reason: "the request cannot be re-encoded"}
	}
	// The canonical form is what is published: it must pass too.
	if _, err := submit.DecodeRunApplication(canonical, lim); err != nil {
		return Request{}, invalidRequest(err, "canonical form: ")
	}
	if key == "" {
		return Request{Key: DeriveKey(canonical), Body: canonical}, nil
	}
	if err := ValidateKey(key); err != nil {
		return Request{}, &InvalidRequestError{Code: CodeInvalidKey, Field: "key", Reason: err.Error()}
	}
	return Request{Key: key, Body: canonical, KeyGiven: true}, nil
}

func invalidRequest(err error, prefix string) *InvalidRequestError {
	if ve, ok := errors.AsType[*submit.ValidationError](err); ok {
		return &InvalidRequestError{Code: ve.Code, Field: ve.Field, Reason: prefix + ve.Reason}
	}
	return &InvalidRequestError{Code: submit.CodeInvalidParameter, Reason: prefix + "the request is invalid"}
}
