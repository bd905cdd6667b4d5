package queue

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/omicsq/omicsq/internal/ledger"
)

// Headers of the message contract. Any NATS client in any language can set
// and read them; see the README's "Message contract".
const (
	// HeaderKey carries the request's idempotency key. Optional on requests:
	// without it the worker uses Nats-Msg-Id, and without that a key derived
	// from the request body (DeriveKey).
	HeaderKey = "Omicsq-Key"
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderReason is the bounded dead-letter reason on DLQ messages.
	HeaderReason = "Omicsq-Reason"
	// HeaderErrorCode is the Tencent error code (or a local validation code) on
	// DLQ messages. Codes are enumerations and never carry request inputs.
	HeaderErrorCode = "Omicsq-Error-Code"
	// HeaderRedriveOf marks a request republished from the DLQ, naming the DLQ
	// stream sequence it came from.
	HeaderRedriveOf = "Omicsq-Redrive-Of"
)

// MaxKeyBytes bounds an idempotency key.
const MaxKeyBytes = 256

// ValidateKey reports whether k can serve as an idempotency key: 1 to
// MaxKeyBytes bytes of printable UTF-8 without spaces. The error never repeats
// the key.
func ValidateKey(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("idempotency key is empty")
	case len(k) > MaxKeyBytes:
		return fmt.Errorf("idempotency key is longer than %d bytes", MaxKeyBytes)
	case !utf8.ValidString(k):
		return fmt.Errorf("idempotency key is not valid UTF-8")
	}
	for _, r := range k {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("idempotency key contains spaces or control characters")
		}
	}
	return nil
}

// DeriveKey returns the idempotency key of a request that was given none: a
// digest of its canonical JSON (the typed request re-marshalled, so spacing
// and key order in the original do not matter). The same request always gets
// the same key, so publishing it twice cannot submit it twice.
func DeriveKey(canonicalJSON []byte) string {
	sum := sha256.Sum256(canonicalJSON)
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// KeyToken maps an idempotency key to a token safe in NATS subjects and KV
// keys, whatever characters the key holds.
func KeyToken(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
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
}

// DeadLetter is the body published to the dead-letter subject. It keeps the
// original request intact so it can be fixed and redriven.
type DeadLetter struct {
	Key string `json:"key"`
	// Request is the original message body when it was valid JSON.
	Request json.RawMessage `json:"request,omitempty"`
	// RawBase64 is the original body when it was not valid JSON.
	RawBase64 string `json:"raw_base64,omitempty"`
	// Reason is a bounded enumeration (see the metrics dead-letter reasons).
	Reason string  `json:"reason"`
	Error  Failure `json:"error"`
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
	History []ledger.Event `json:"history,omitempty"`
}

// Failure describes why a request was dead-lettered.
type Failure struct {
	// Class is the API error class (permanent, throttled, ...) or "invalid"
	// for requests rejected before any call.
	Class string `json:"class"`
	Code  string `json:"code"`
	// Message is the API's message or the local validation reason.
	Message   string `json:"message,omitempty"`
	Field     string `json:"field,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// DecodeResult decodes a results message, rejecting unknown fields.
func DecodeResult(data []byte) (Result, error) {
	var r Result
	if err := decodeStrict(data, &r); err != nil {
		return Result{}, fmt.Errorf("decode result: %w", err)
	}
	if r.Key == "" || r.RunGroupID == "" {
		return Result{}, fmt.Errorf("decode result: key and run_group_id are required")
	}
	return r, nil
}

// DecodeDeadLetter decodes a dead-letter message, rejecting unknown fields.
func DecodeDeadLetter(data []byte) (DeadLetter, error) {
	var d DeadLetter
	if err := decodeStrict(data, &d); err != nil {
		return DeadLetter{}, fmt.Errorf("decode dead letter: %w", err)
	}
	if d.Key == "" || d.Reason == "" {
		return DeadLetter{}, fmt.Errorf("decode dead letter: key and reason are required")
	}
	if string(d.Request) == "null" {
		d.Request = nil
	}
	if len(d.Request) == 0 && d.RawBase64 == "" && d.Reason != "invalid_request" {
		// Only a message rejected as invalid can have had an empty body.
		return DeadLetter{}, fmt.Errorf("decode dead letter: neither request nor raw_base64 is present")
	}
	return d, nil
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}
