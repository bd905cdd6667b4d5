package submit

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"strings"

	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
)

// Class tells the caller what a failed call means for the request, so the
// queue can decide between retrying, reconciling, dead-lettering and
// pausing in one switch.
type Class int

const (
	// ClassThrottled: the API refused the call for rate limiting before
	// executing it. Retry after a delay.
	ClassThrottled Class = iota + 1
	// ClassTransient: the request was rejected before execution or never
	// reached the server (dial-phase failure). Retry with backoff.
	ClassTransient
	// ClassAmbiguous: the call may have executed (timeout or reset after the
	// request was written, an unreadable answer, InternalError). Reconcile
	// with DescribeRunGroups before submitting again.
	ClassAmbiguous
	// ClassPermanent: the request itself is wrong (parameters, missing
	// resources, duplicate name). Retrying cannot help.
	ClassPermanent
	// ClassSystemic: credentials, permissions, quota, endpoint or an
	// unrecognised code. No single request is at fault; pause consuming.
	ClassSystemic
)

// Classes lists every Class of a failed call, in a stable order (metrics
// pre-create a series for each).
var Classes = []Class{ClassThrottled, ClassTransient, ClassAmbiguous, ClassPermanent, ClassSystemic}

// String returns "throttled", "transient", "ambiguous", "permanent",
// "systemic", or "none" for the zero Class.
func (c Class) String() string {
	switch c {
	case ClassThrottled:
		return "throttled"
	case ClassTransient:
		return "transient"
	case ClassAmbiguous:
		return "ambiguous"
	case ClassPermanent:
		return "permanent"
	case ClassSystemic:
		return "systemic"
	case 0:
		return "none"
	default:
		return "invalid"
	}
}

// Error is the only error type the Client returns: every failure is
// classified once, here.
//
// Error() names the action, code, class and request id only. Message and
// the text of Err may echo request inputs (the server quotes parameters; the
// SDK quotes response bodies), so they must not be logged or exported.
type Error struct {
	// Action is the API action called, e.g. "RunApplication".
	Action string
	// Class is what the failure means for the request.
	Class Class
	// Code is the Tencent error code, a ClientError.* code from the SDK, or
	// CodeInvalidResponse.
	Code string
	// Message is the server's or SDK's message. It may contain request
	// inputs: never log it.
	Message string
	// RequestID is the server's RequestId; empty when no structured answer
	// arrived.
	RequestID string
	// DuplicateName reports InvalidParameterValue.DuplicateName: a run group
	// with this Name exists, possibly created by an earlier attempt.
	DuplicateName bool
	// Err is the underlying SDK or transport error, for errors.Is/As (for
	// example context.DeadlineExceeded). Its text is not safe to log.
	Err error
}

// Error returns e.g. "omics RunApplication: InvalidParameterValue.DuplicateName
// (permanent, request id 2f86…)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("omics ")
	b.WriteString(e.Action)
	b.WriteString(": ")
	b.WriteString(e.Code)
	b.WriteString(" (")
	b.WriteString(e.Class.String())
	if e.RequestID != "" {
		b.WriteString(", request id ")
		b.WriteString(e.RequestID)
	}
	b.WriteString(")")
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// NothingDone reports whether the failure proves that the call did nothing:
// the API documents the answer as a refusal before execution (throttling,
// authentication, permissions, quota, an unknown action, version or
// region), or the request never left this host (a dial failure, a context
// done before sending, a credential or client-side error). Any other
// failure — InternalError, a timeout or reset after sending, an unreadable
// answer, ServiceUnavailable, Resource*, and every code nobody reviewed —
// may follow a call that created its run group.
func (e *Error) NothingDone() bool {
	switch e.Class {
	case ClassThrottled:
		return true
	case ClassTransient:
		return e.RequestID == "" // dial phase or never sent; an answered transient code is not proof
	case ClassPermanent:
		return false // a rejection; whether an earlier call created is the caller's question
	case ClassSystemic:
		return e.RequestID == "" || inFamily(e.Code, refusedBeforeExecution...) ||
			e.Code == "InvalidParameterValue.EnvironmentNotAvailable" || e.Code == "ResourceNotFound.EnvironmentNotExist"
	}
	return false
}

// refusedBeforeExecution are the systemic codes the API answers before
// executing anything (Tencent Cloud API 3.0 common errors: the gateway checks
// identity, permission, quota, action and version first).
var refusedBeforeExecution = []string{
	"AuthFailure", "UnauthorizedOperation", "OperationDenied", "LimitExceeded", "IpInBlacklist", "IpNotInWhitelist",
	"InvalidAction", "NoSuchProduct", "NoSuchVersion", "ActionOffline", "UnsupportedRegion", "UnsupportedProtocol",
	"UnsupportedOperation",
}

// ClassOf returns the Class of the first *Error in err's chain. Any other
// non-nil error is ClassAmbiguous: without knowing where it came from, the
// safe assumption is that the call may have executed. ClassOf(nil) is the
// zero Class ("none").
func ClassOf(err error) Class {
	if err == nil {
		return 0
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Class
	}
	return ClassAmbiguous
}

// Codes produced on the client side. The ClientError.* codes are the SDK's.
const (
	// CodeInvalidResponse marks a success answer the client cannot use: not
	// decodable, or a RunApplication answer without RunGroupId. The call may
	// have executed, so it is ClassAmbiguous.
	CodeInvalidResponse = "ClientError.InvalidResponse"

	codeNetworkError        = "ClientError.NetworkError"
	codeParseJSONError      = "ClientError.ParseJsonError"
	codeHTTPStatusCodeError = "ClientError.HttpStatusCodeError"
	codeIOError             = "ClientError.IOError"
	codeClientInvalidParam  = "ClientError.InvalidParameter"
	codeCredentialError     = "ClientError.CredentialError"
	codeCircuitBreakerError = "ClientError.CircuitBreakerError"
	codeDuplicateName       = "InvalidParameterValue.DuplicateName"
)

// serverCodes lists the omics product codes (omics-api.md §2, from the SDK's
// omics errors.go) and the Tencent Cloud API 3.0 common codes (§4.2).
var serverCodes = []string{
	"ActionOffline",
	"AuthFailure",
	"AuthFailure.InvalidAuthorization",
	"AuthFailure.InvalidSecretId",
	"AuthFailure.MFAFailure",
	"AuthFailure.SecretIdNotFound",
	"AuthFailure.SignatureExpire",
	"AuthFailure.SignatureFailure",
	"AuthFailure.TokenFailure",
	"AuthFailure.UnauthorizedOperation",
	"DryRunOperation",
	"FailedOperation",
	"FailedOperation.DuplicateTableHeader",
	"FailedOperation.EmailCountLimitExceeded",
	"FailedOperation.EmptyTableHeader",
	"FailedOperation.InvalidTableHeader",
	"FailedOperation.InvalidTableLength",
	"FailedOperation.RetryLimitExceeded",
	"FailedOperation.StatusNotSupported",
	"FailedOperation.TableDataTypeMismatch",
	"FailedOperation.VersionNotReleased",
	"InternalError",
	"InvalidAction",
	"InvalidParameter",
	"InvalidParameterValue",
	"InvalidParameterValue.DuplicateName",
	"InvalidParameterValue.EntrypointNotSet",
	"InvalidParameterValue.EnvironmentNotAvailable",
	"InvalidParameterValue.InvalidBase64Encode",
	"InvalidParameterValue.InvalidCosKey",
	"InvalidParameterValue.InvalidCsvFormat",
	"InvalidParameterValue.InvalidDescription",
	"InvalidParameterValue.InvalidEmailFormat",
	"InvalidParameterValue.InvalidInputJsonFormat",
	"InvalidParameterValue.InvalidInputPlaceholder",
	"InvalidParameterValue.InvalidName",
	"InvalidParameterValue.InvalidRunOption",
	"InvalidParameterValue.InvalidTimeoutMinutes",
	"InvalidParameterValue.TableDataTypeLengthMismatch",
	"InvalidParameterValue.UnsupportedTableDataType",
	"InvalidRequest",
	"IpInBlacklist",
	"IpNotInWhitelist",
	"LimitExceeded",
	"MissingParameter",
	"NoSuchProduct",
	"NoSuchVersion",
	"OperationDenied",
	"RequestLimitExceeded",
	"RequestLimitExceeded.GlobalRegionUinLimitExceeded",
	"RequestLimitExceeded.IPLimitExceeded",
	"RequestLimitExceeded.UinLimitExceeded",
	"RequestSizeLimitExceeded",
	"ResourceInUse",
	"ResourceInsufficient",
	"ResourceNotFound",
	"ResourceNotFound.ApplicationNotExist",
	"ResourceNotFound.ApplicationVersionNotExist",
	"ResourceNotFound.CosBucketNotExist",
	"ResourceNotFound.CosObjectNotExist",
	"ResourceNotFound.EnvironmentNotExist",
	"ResourceNotFound.ProjectNotExist",
	"ResourceNotFound.RunGroupNotExist",
	"ResourceNotFound.RunNotExist",
	"ResourceNotFound.TableNotExist",
	"ResourceNotFound.TableRowNotExist",
	"ResourceUnavailable",
	"ResponseSizeLimitExceeded",
	"ServiceUnavailable",
	"UnauthorizedOperation",
	"UnknownParameter",
	"UnsupportedOperation",
	"UnsupportedProtocol",
	"UnsupportedRegion",
}

// clientCodes are the codes this package reports for failures detected on
// the client side.
var clientCodes = []string{
	codeCircuitBreakerError,
	codeCredentialError,
	codeHTTPStatusCodeError,
	codeIOError,
	codeClientInvalidParam,
	CodeInvalidResponse,
	codeNetworkError,
	codeParseJSONError,
}

var knownCodes = func() map[string]bool {
	m := make(map[string]bool, len(serverCodes)+len(clientCodes))
	for _, c := range serverCodes {
		m[c] = true
	}
	for _, c := range clientCodes {
		m[c] = true
	}
	return m
}()

// KnownCodes returns every code an *Error can carry that is worth its own
// metric label: the omics product codes, the Tencent Cloud common codes, and
// the client-side ClientError.* codes. The list is sorted and bounded; the
// caller owns the returned slice.
func KnownCodes() []string {
	codes := make([]string, 0, len(knownCodes))
	codes = append(codes, serverCodes...)
	codes = append(codes, clientCodes...)
	slices.Sort(codes)
	return codes
}

// MetricCode maps an error code to a bounded metric label value: the code
// itself if it is in KnownCodes, "none" for the empty code, "other" for
// anything else (a server could send any string).
func MetricCode(code string) string {
	switch {
	case code == "":
		return "none"
	case knownCodes[code]:
		return code
	default:
		return "other"
	}
}

// inFamily reports whether code is family or one of its sub-codes
// ("AuthFailure" matches "AuthFailure.TokenFailure", not "AuthFailures").
func inFamily(code string, families ...string) bool {
	for _, f := range families {
		if code == f || strings.HasPrefix(code, f+".") {
			return true
		}
	}
	return false
}

// classifyServerCode classifies a code the server answered with.
// Unrecognised codes are ClassSystemic: pausing the consumer and alerting a
// human is recoverable, while dead-lettering (permanent) or blind retries
// (transient) on a code nobody has reviewed could lose or duplicate runs.
func classifyServerCode(code string) Class {
	switch {
	case code == "InvalidParameterValue.EnvironmentNotAvailable", code == "ResourceNotFound.EnvironmentNotExist",
		code == "FailedOperation":
		// An environment outage (or a generic failure) is not the sample's
		// fault: dead-lettering would empty the backlog into the DLQ.
		return ClassSystemic
	case !knownCodes[code] && inFamily(code, "InvalidParameter", "InvalidParameterValue", "ResourceNotFound",
		"FailedOperation", "MissingParameter", "UnknownParameter", "InvalidRequest"):
		// A sub-code nobody reviewed: pause and alert rather than
		// dead-letter on a guess.
		return ClassSystemic
	case inFamily(code, "RequestLimitExceeded"):
		return ClassThrottled
	case inFamily(code, "ServiceUnavailable", "ResourceInsufficient", "ResourceUnavailable", "ResourceInUse"):
		return ClassTransient
	case inFamily(code, "InternalError"):
		return ClassAmbiguous
	case inFamily(code, "InvalidParameter", "InvalidParameterValue", "ResourceNotFound", "FailedOperation",
		"MissingParameter", "UnknownParameter", "RequestSizeLimitExceeded", "ResponseSizeLimitExceeded",
		"InvalidRequest", "DryRunOperation"):
		return ClassPermanent
	default:
		// AuthFailure*, UnauthorizedOperation*, OperationDenied*,
		// LimitExceeded*, IpInBlacklist, IpNotInWhitelist, InvalidAction,
		// NoSuchProduct, NoSuchVersion, ActionOffline, Unsupported*, and
		// every unknown code.
		return ClassSystemic
	}
}

// classify turns whatever Client.Send returned into an *Error.
func classify(action string, err error) *Error {
	e := &Error{Action: action, Err: err}
	sdkErr, ok := errors.AsType[*tcerr.TencentCloudSDKError](err)
	if !ok {
		// Errors the SDK does not wrap come from building the HTTP request
		// or decoding a received response's Content-Encoding; the latter
		// means the call reached the server.
		e.Class = ClassAmbiguous
		e.Code = CodeInvalidResponse
		return e
	}
	e.Code, e.Message, e.RequestID = sdkErr.Code, sdkErr.Message, sdkErr.RequestId
	e.DuplicateName = e.Code == codeDuplicateName
	if !strings.HasPrefix(e.Code, "ClientError.") {
		e.Class = classifyServerCode(e.Code)
		return e
	}
	switch e.Code {
	case codeNetworkError:
		switch {
		case dialPhase(err):
			e.Class = ClassTransient
		case certificateRejected(err):
			e.Class = ClassSystemic
		default:
			e.Class = ClassAmbiguous
		}
	case codeParseJSONError, codeHTTPStatusCodeError, codeIOError:
		e.Class = ClassAmbiguous
	case codeClientInvalidParam:
		e.Class = ClassPermanent
	default: // CredentialError, CircuitBreakerError, anything new
		e.Class = ClassSystemic
	}
	return e
}

// dialPhase reports a failure to open the connection (refused, DNS, dial
// timeout): the request was never written, so retrying cannot duplicate it.
func dialPhase(err error) bool {
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return true
	}
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "dial"
}

// certificateRejected reports a TLS certificate the client refused. The
// handshake precedes the request, so nothing was sent, and retrying will not
// change the certificate: a deployment problem, not a request problem.
func certificateRejected(err error) bool {
	_, ok := errors.AsType[*tls.CertificateVerificationError](err)
	return ok
}
