package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/omicsq/omicsq/internal/keys"
)

// Headers of the message contract. Any NATS client in any language can set
// and read them.
const (
	// HeaderKey carries the request's idempotency key. Optional on requests:
	// without it the worker uses Nats-Msg-Id, and without that a key derived
	// from the request body (DeriveKey).
	HeaderKey = "Omicsq-Key"
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderReason is the DeadLetterReason on dead-letter messages.
	HeaderReason = "Omicsq-Reason"
	// HeaderErrorCode is the Tencent error code (or a local validation code)
	// on dead-letter messages. Codes are enumerations and never carry request
	// inputs.
	HeaderErrorCode = "Omicsq-Error-Code"
	// HeaderRedriveOf marks a request republished from the dead-letter queue,
	// naming the dead letter's stream sequence.
	HeaderRedriveOf = "Omicsq-Redrive-Of"
)

// MaxKeyBytes bounds an idempotency key.
const MaxKeyBytes = 256

// ValidateKey reports whether k can serve as an idempotency key: 1 to
// MaxKeyBytes bytes of printable UTF-8 without spaces. The error never
// repeats the key, which may hold a sample identifier.
func ValidateKey(k string) error { return keys.Validate(k) }

// DeriveKey returns the idempotency key of a request given none: a digest of
// its canonical JSON (the typed request re-marshalled, so spacing and key
// order in the original do not matter). The same request always gets the
// same key, so publishing it twice cannot submit it twice.
func DeriveKey(canonicalJSON []byte) string { return keys.Derive(canonicalJSON) }

// KeyToken maps an idempotency key to the token that names it in subjects
// (<results prefix>.<token>, <dlq prefix>.<token>) and in the ledger: 32 hex
// digits of its SHA-256, whatever characters the key holds.
func KeyToken(key string) string { return keys.Token(key) }

// DeadLetterReason says, from a bounded set, why a request was dead-lettered.
// It is the HeaderReason of the dead letter and a metric label.
type DeadLetterReason string

// Dead-letter reasons. The worker's state machine (internal/submission)
// decides among them; they are listed here because consumers filter on them.
const (
	// ReasonInvalidRequest: the body is not a valid RunApplication request
	// (or the key is unusable); no call was made.
	ReasonInvalidRequest DeadLetterReason = "invalid_request"
	// ReasonPermanentError: the API refused the request (InvalidParameter
	// and other permanent codes); nothing was created.
	ReasonPermanentError DeadLetterReason = "permanent_error"
	// ReasonNameConflict: the Name is taken by a run group this request did
	// not create. Redrive with another Name.
	ReasonNameConflict DeadLetterReason = "name_conflict"
	// ReasonRetriesExhausted: throttling or transient failures outlasted the
	// retry budget; no call is known to have created anything.
	ReasonRetriesExhausted DeadLetterReason = "retries_exhausted"
	// ReasonReconcileExhausted: a call may have created a run group and the
	// lookups did not find one within the horizon. Check the console before
	// redriving: the redrive is refused while the ledger says maybe created,
	// unless the identity is unchanged.
	ReasonReconcileExhausted DeadLetterReason = "reconcile_exhausted"
	// ReasonMaxDeliveries: the message was delivered too often without an
	// outcome (a crash loop).
	ReasonMaxDeliveries DeadLetterReason = "max_deliveries"
	// ReasonIdentityChanged: a redriven body names a different run group
	// (Name or project) than a call already made for the key may have
	// created; the worker refused it rather than risk a second run.
	ReasonIdentityChanged DeadLetterReason = "identity_changed"
	// ReasonDuplicateInFlight: another message with the same key was being
	// called for at the same time.
	ReasonDuplicateInFlight DeadLetterReason = "duplicate_in_flight"
	// ReasonPauseLimit: the request kept failing the fleet's pause trial
	// (a systemic error that seemed specific to it).
	ReasonPauseLimit DeadLetterReason = "pause_limit"
	// ReasonBreaker: an operator dead-lettered requests held by a resource
	// breaker (enqueue breaker dead-letter).
	ReasonBreaker DeadLetterReason = "breaker"
	// ReasonBatchCancelled: the request's batch (HeaderBatch) was
	// cancelled (CancelBatch) before it was submitted; no call was made.
	ReasonBatchCancelled DeadLetterReason = "batch_cancelled"
)

// DeadLetterReasons lists every reason, in a stable order.
var DeadLetterReasons = []DeadLetterReason{
	ReasonInvalidRequest, ReasonPermanentError, ReasonNameConflict, ReasonRetriesExhausted,
	ReasonReconcileExhausted, ReasonMaxDeliveries, ReasonIdentityChanged, ReasonDuplicateInFlight,
	ReasonPauseLimit, ReasonBreaker, ReasonBatchCancelled,
}

// Result is the body published to the results subject once per request.
type Result struct {
	Key string `json:"key"`
	// RunGroupID is the run group the request created.
	RunGroupID string `json:"run_group_id"`
	// RequestID is Tencent's RequestId of the call that created the run group,
	// or of the DescribeRunGroups call that found it after an ambiguous outcome.
	RequestID string `json:"request_id,omitempty"`
	// Attempts counts RunApplication calls made for the request.
	Attempts int `json:"attempts"`
	// Reconciled is true when the run group was found by name after an
	// ambiguous outcome rather than returned by the call itself.
	Reconciled  bool      `json:"reconciled,omitempty"`
	EnqueuedAt  time.Time `json:"enqueued_at"`
	SubmittedAt time.Time `json:"submitted_at"`
	Worker      string    `json:"worker"`
	// Batch is the request's HeaderBatch, also set as that header.
	Batch string `json:"batch,omitempty"`
}

// DeadLetter is the body published to the dead-letter subject. It keeps the
// original request intact so it can be fixed and redriven.
type DeadLetter struct {
	Key string `json:"key"`
	// Request is the original message body when it was valid JSON.
	Request json.RawMessage `json:"request,omitempty"`
	// RawBase64 is the original body when it was not valid JSON.
	RawBase64 string           `json:"raw_base64,omitempty"`
	Reason    DeadLetterReason `json:"reason"`
	Error     Failure          `json:"error"`
	// Attempts counts RunApplication calls made; Deliveries counts JetStream
	// deliveries of the message.
	Attempts   int       `json:"attempts"`
	Deliveries uint64    `json:"deliveries"`
	EnqueuedAt time.Time `json:"enqueued_at"`
	FailedAt   time.Time `json:"failed_at"`
	Worker     string    `json:"worker"`
	// StreamSequence is the request's sequence in the requests stream.
	StreamSequence uint64 `json:"stream_sequence,omitempty"`
	// History lists the outcomes of the calls and reconciliations made.
	History []Event `json:"history,omitempty"`
	// Batch is the request's HeaderBatch, also set as that header.
	Batch string `json:"batch,omitempty"`
	// Priority and FairnessKey are the request's lane and fairness key
	// (HeaderPriority, HeaderFairnessKey), also set as those headers, so
	// that a redrive publishes it to the flow it came from.
	Priority    Priority `json:"priority,omitempty"`
	FairnessKey string   `json:"fairness_key,omitempty"`
}

// FailureClassInvalid is the Failure.Class of a request rejected before any
// call (reason invalid_request).
const FailureClassInvalid = "invalid"

// Failure describes why a request was dead-lettered.
type Failure struct {
	// Class is the API error class: throttled, transient, ambiguous,
	// permanent, systemic, or FailureClassInvalid for a request rejected
	// before any call.
	Class string `json:"class"`
	Code  string `json:"code"`
	// Message is the API's message or the local validation reason.
	Message   string `json:"message,omitempty"`
	Field     string `json:"field,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// Event is one step in a request's history: a call, a lookup, a dead letter,
// a redrive or a refusal, with its outcome. Events never hold request inputs.
type Event struct {
	At time.Time `json:"at"`
	// Kind is call, lookup, dead_letter, redrive or refused.
	Kind      string `json:"kind"`
	Outcome   string `json:"outcome"`
	Code      string `json:"code,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Worker    string `json:"worker,omitempty"`
}

// DecodeResult decodes a results message. Fields it does not know are
// ignored, so a reader keeps working when a minor version adds one.
func DecodeResult(data []byte) (Result, error) {
	var r Result
	if err := decodeOne(data, &r); err != nil {
		return Result{}, fmt.Errorf("decode result: %w", err)
	}
	if r.Key == "" || r.RunGroupID == "" {
		return Result{}, fmt.Errorf("decode result: key and run_group_id are required")
	}
	return r, nil
}

// DecodeDeadLetter decodes a dead-letter message, ignoring fields it does
// not know (see DecodeResult).
func DecodeDeadLetter(data []byte) (DeadLetter, error) {
	var d DeadLetter
	if err := decodeOne(data, &d); err != nil {
		return DeadLetter{}, fmt.Errorf("decode dead letter: %w", err)
	}
	if d.Key == "" || d.Reason == "" {
		return DeadLetter{}, fmt.Errorf("decode dead letter: key and reason are required")
	}
	if string(d.Request) == "null" {
		d.Request = nil
	}
	if len(d.Request) == 0 && d.RawBase64 == "" && d.Reason != ReasonInvalidRequest {
		// Only a message rejected as invalid can have had an empty body.
		return DeadLetter{}, fmt.Errorf("decode dead letter: neither request nor raw_base64 is present")
	}
	return d, nil
}

// decodeOne decodes exactly one JSON value; trailing data is an error.
func decodeOne(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}
