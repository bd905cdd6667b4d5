package client

import (
	"errors"
	"fmt"
	"strings"
)

// Topology names the streams and subjects of the contract: where requests
// are published and where results and dead letters appear. Workers and
// producers must agree on it; the zero value is not useful, start from
// DefaultTopology.
type Topology struct {
	// RequestsStream holds run requests until each has an outcome.
	// Default OMICSQ_REQUESTS.
	RequestsStream string
	// RequestsSubject is where producers publish. Default omicsq.requests.
	RequestsSubject string
	// ResultsStream keeps one result per request. Default OMICSQ_RESULTS.
	ResultsStream string
	// ResultsPrefix: a result is published to <prefix>.<key token>.
	// Default omicsq.results.
	ResultsPrefix string
	// DLQStream keeps dead letters. Default OMICSQ_DLQ.
	DLQStream string
	// DLQPrefix: a dead letter is published to <prefix>.<key token>.
	// Default omicsq.dlq.
	DLQPrefix string
	// StatusStream keeps run lifecycle events (StatusEvent). Default
	// OMICSQ_STATUS.
	StatusStream string
	// StatusPrefix: events are published to <prefix>.<key token>.group and
	// <prefix>.<key token>.run.<run token>. Default omicsq.status.
	StatusPrefix string
	// BatchesBucket is the KV bucket of the batches' records (see
	// RegisterBatch); the workers provision it with the run tracker's
	// resources. Default OMICSQ_BATCHES; empty: batches are off.
	BatchesBucket string
}

// DefaultTopology returns the documented default names.
func DefaultTopology() Topology {
	return Topology{
		RequestsStream:  "OMICSQ_REQUESTS",
		RequestsSubject: "omicsq.requests",
		ResultsStream:   "OMICSQ_RESULTS",
		ResultsPrefix:   "omicsq.results",
		DLQStream:       "OMICSQ_DLQ",
		DLQPrefix:       "omicsq.dlq",
		StatusStream:    "OMICSQ_STATUS",
		StatusPrefix:    "omicsq.status",
		BatchesBucket:   "OMICSQ_BATCHES",
	}
}

// Validate reports every name that is empty or blank, in field order, as
// "requests stream must not be empty" and so on.
func (t Topology) Validate() error {
	var errs []error
	for _, n := range []struct{ name, value string }{
		{"requests stream", t.RequestsStream}, {"requests subject", t.RequestsSubject}, {"results stream", t.ResultsStream},
		{"results prefix", t.ResultsPrefix}, {"dlq stream", t.DLQStream}, {"dlq prefix", t.DLQPrefix},
		{"status stream", t.StatusStream}, {"status prefix", t.StatusPrefix},
	} {
		if strings.TrimSpace(n.value) == "" {
			errs = append(errs, fmt.Errorf("%s must not be empty", n.name))
		}
	}
	return errors.Join(errs...)
}

// ResultSubject is the subject of key's result.
func (t Topology) ResultSubject(key string) string { return t.ResultsPrefix + "." + KeyToken(key) }

// DLQSubject is the subject of key's dead letters.
func (t Topology) DLQSubject(key string) string { return t.DLQPrefix + "." + KeyToken(key) }
