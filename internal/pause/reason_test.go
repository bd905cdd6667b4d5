package pause

import "testing"

func TestReasonFor(t *testing.T) {
	for code, want := range map[string]Reason{
		"AuthFailure":                                   ReasonAuth,
		"AuthFailure.SecretIdNotFound":                  ReasonAuth,
		"ClientError.CredentialError":                   ReasonAuth,
		"UnauthorizedOperation":                         ReasonPermission,
		"UnauthorizedOperation.NoPolicy":                ReasonPermission,
		"OperationDenied":                               ReasonPermission,
		"OperationDenied.AccountArrears":                ReasonPermission,
		"IpInBlacklist":                                 ReasonPermission,
		"IpNotInWhitelist":                              ReasonPermission,
		"LimitExceeded":                                 ReasonQuota,
		"LimitExceeded.RunGroup":                        ReasonQuota,
		"ClientError.NetworkError":                      ReasonUnreachable,
		"ResourceNotFound.EnvironmentNotExist":          ReasonEnvironment,
		"InvalidParameterValue.EnvironmentNotAvailable": ReasonEnvironment,
		"FailedOperation":                               ReasonConfig,
		"UnsupportedRegion":                             ReasonConfig,
		"":                                              ReasonConfig,
	} {
		if got := ReasonFor(code); got != want {
			t.Errorf("ReasonFor(%q) = %q, want %q", code, got, want)
		}
	}
}

// Every reason ReasonFor can return is listed, so metrics pre-create its
// series.
func TestReasonsListsEveryReason(t *testing.T) {
	listed := map[Reason]bool{}
	for _, r := range Reasons {
		if listed[r] {
			t.Errorf("%q listed twice", r)
		}
		listed[r] = true
	}
	for _, r := range []Reason{ReasonAuth, ReasonPermission, ReasonQuota, ReasonUnreachable, ReasonConfig, ReasonEnvironment} {
		if !listed[r] {
			t.Errorf("Reasons lacks %q", r)
		}
	}
}
