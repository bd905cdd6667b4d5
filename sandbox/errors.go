package sandbox

import "fmt"

// Error codes the sandbox answers with (omics-api.md §1.5, §2, §4.2).
const (
	codeUnsupportedProtocol      = "UnsupportedProtocol"
	codeRequestSizeLimitExceeded = "RequestSizeLimitExceeded"
	codeMissingParameter         = "MissingParameter"
	codeInvalidParameter         = "InvalidParameter"
	codeInvalidParameterValue    = "InvalidParameterValue"
	codeUnknownParameter         = "UnknownParameter"
	codeNoSuchVersion            = "NoSuchVersion"
	codeInvalidAction            = "InvalidAction"
	codeUnsupportedRegion        = "UnsupportedRegion"
	codeInvalidAuthorization     = "AuthFailure.InvalidAuthorization"
	codeSecretIDNotFound         = "AuthFailure.SecretIdNotFound"
	codeSignatureExpire          = "AuthFailure.SignatureExpire"
	codeSignatureFailure         = "AuthFailure.SignatureFailure"
	codeTokenFailure             = "AuthFailure.TokenFailure"
	codeRequestLimitExceeded     = "RequestLimitExceeded"
	codeInternalError            = "InternalError"
	codeDuplicateName            = "InvalidParameterValue.DuplicateName"
	codeApplicationNotExist      = "ResourceNotFound.ApplicationNotExist"
	codeEnvironmentNotExist      = "ResourceNotFound.EnvironmentNotExist"
	codeEnvironmentNotAvailable  = "InvalidParameterValue.EnvironmentNotAvailable"
	codeProjectNotExist          = "ResourceNotFound.ProjectNotExist"
	codeTableNotExist            = "ResourceNotFound.TableNotExist"
	codeRunGroupNotExist         = "ResourceNotFound.RunGroupNotExist"
)

// apiError is an error answer: Response.Error{Code, Message}. Messages name
// parameters, never their values: request inputs may identify patients.
type apiError struct {
	Code    string `json:"Code"`
	Message string `json:"Message"`
}

func errorf(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}
