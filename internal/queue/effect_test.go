package queue

import (
	"testing"

	"github.com/omicsq/omicsq/internal/ledger"
	"github.com/omicsq/omicsq/internal/submit"
)

// Only what the API documents as "nothing was done" counts as proof that no
// run group was created (scenario 6 of issue 11).
func TestEffectOf(t *testing.T) {
	for _, tc := range []struct {
		err  submit.Error
		want ledger.Effect
	}{
		{submit.Error{Class: submit.ClassThrottled, Code: "RequestLimitExceeded", RequestID: "r"}, ledger.EffectNotExecuted},
		{submit.Error{Class: submit.ClassSystemic, Code: "AuthFailure.SecretIdNotFound", RequestID: "r"}, ledger.EffectNotExecuted},
		{submit.Error{Class: submit.ClassSystemic, Code: "LimitExceeded", RequestID: "r"}, ledger.EffectNotExecuted},
		{submit.Error{Class: submit.ClassSystemic, Code: "ClientError.CredentialError"}, ledger.EffectNotExecuted},
		// A code nobody reviewed pauses the fleet but proves nothing.
		{submit.Error{Class: submit.ClassSystemic, Code: "FailedToAnswer.Unknown", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassTransient, Code: "ClientError.NetworkError"}, ledger.EffectNotExecuted}, // dial phase
		{submit.Error{Class: submit.ClassTransient, Code: "ServiceUnavailable", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassTransient, Code: "ResourceUnavailable", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassTransient, Code: "ResourceInsufficient", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassTransient, Code: "ResourceInUse", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassAmbiguous, Code: "InternalError", RequestID: "r"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassAmbiguous, Code: "ClientError.NetworkError"}, ledger.EffectMaybeExecuted},
		{submit.Error{Class: submit.ClassPermanent, Code: "InvalidParameterValue.DuplicateName", DuplicateName: true, RequestID: "r"}, ledger.EffectDuplicateName},
		{submit.Error{Class: submit.ClassPermanent, Code: "ResourceNotFound.ApplicationNotExist", RequestID: "r"}, ledger.EffectRejected},
	} {
		if got := effectOf(&tc.err); got != tc.want {
			t.Errorf("effectOf(%s %s) = %v, want %v", tc.err.Class, tc.err.Code, got, tc.want)
		}
	}
}
