// Package client is omicsq's message contract for Go programs: the request,
// result and dead-letter bodies, the header names, how an idempotency key is
// validated, derived and turned into a subject token, the names of the
// streams and subjects, and a Client that publishes requests, waits for their
// outcomes, lists dead letters and redrives them.
//
// # Stability
//
// Everything exported here is a stable contract under semantic versioning:
// field names and JSON tags, header names, reason strings and the key token
// change only with a new major version. Fields may be added; decoders in this
// package reject unknown fields, so upgrade consumers before producers when a
// minor version adds one. Programs in other languages read the same contract
// from docs/design.md ("Message contract").
//
// # Exactly once
//
// A request is identified by its idempotency key (HeaderKey). However often a
// key is published, redelivered or redriven, the worker creates at most one
// run group for it and publishes at most one Result; a request that cannot
// be submitted ends as a DeadLetter carrying its original body and a
// DeadLetterReason. Publish with the same key to retry safely.
package client
