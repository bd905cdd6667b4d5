package submission

import "github.com/omicsq/omicsq/internal/submit"

// Outcome is how one delivery of a request ended. It is a bounded set: it
// labels metrics and the per-message log line, so the values are part of
// the operators' contract (docs/metrics.md).
type Outcome string

// Outcomes of a delivery.
const (
	// OutcomeSuccess: submitted; the result was published.
	OutcomeSuccess Outcome = "success"
	// OutcomeDeduplicated: settled earlier, its result or dead letter
	// republished; or another message of the key carries it.
	OutcomeDeduplicated Outcome = "deduplicated"
	// OutcomeDeadLettered: moved to the DLQ and acked.
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeReleased: handed back unprocessed (shutdown, a long wait,
	// another holder of the key).
	OutcomeReleased Outcome = "released"
	// OutcomeError: failed; handed back for a later redelivery.
	OutcomeError Outcome = "error"
)

// Outcomes lists every Outcome, in a stable order (the order docs list them).
var Outcomes = []Outcome{OutcomeSuccess, OutcomeDeduplicated, OutcomeDeadLettered, OutcomeReleased, OutcomeError}

// RetryReason says why a call is to be made again; a bounded set (it labels
// metrics).
type RetryReason string

// Retry reasons, one per retried error class.
const (
	RetryThrottled RetryReason = "throttled"
	RetryTransient RetryReason = "transient"
	RetryAmbiguous RetryReason = "ambiguous"
	RetrySystemic  RetryReason = "systemic"
)

// RetryReasons lists every RetryReason, in a stable order.
var RetryReasons = []RetryReason{RetryThrottled, RetryTransient, RetryAmbiguous, RetrySystemic}

// RetryReasonOf returns the reason a failed call of class c is retried,
// false for a class that is never retried (a permanent rejection).
func RetryReasonOf(c submit.Class) (RetryReason, bool) {
	switch c {
	case submit.ClassThrottled:
		return RetryThrottled, true
	case submit.ClassTransient:
		return RetryTransient, true
	case submit.ClassAmbiguous:
		return RetryAmbiguous, true
	case submit.ClassSystemic:
		return RetrySystemic, true
	default:
		return "", false
	}
}
