// Package submit is the worker's side of the Tencent Cloud Healthcare Omics
// API (version 2022-11-28): the RunApplication request types, their strict
// decoding and local validation, and a Client that calls RunApplication and
// DescribeRunGroups through the Tencent SDK's generic client (TC3-HMAC-SHA256
// signing by the SDK).
//
// Every Client error is an *Error carrying one Class, decided here and
// nowhere else:
//
//   - ClassThrottled: RequestLimitExceeded and its sub-codes.
//   - ClassTransient: rejected before execution, or never sent (dial-phase
//     network failure).
//   - ClassAmbiguous: may have executed (InternalError, timeouts and resets
//     after the request was written, unreadable answers). RunApplication has
//     no idempotency token, so reconcile with FindRunGroupsByName before
//     submitting again; the run-group Name is the idempotency key.
//   - ClassPermanent: the request is wrong. DuplicateName is flagged
//     separately because it usually means an earlier attempt succeeded.
//   - ClassSystemic: credentials, permissions, quota, configuration, and any
//     code not reviewed yet. Pause rather than drop messages.
//
// Request fields may carry patient or sample identifiers, so no error text
// produced here includes a field value or a server message.
package submit
