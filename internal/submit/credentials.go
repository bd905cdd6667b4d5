package submit

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

// Environment variables CredentialFromEnvironment reads.
const (
	EnvSecretID     = "TENCENTCLOUD_SECRET_ID"
	EnvSecretKey    = "TENCENTCLOUD_SECRET_KEY"
	EnvSessionToken = "TENCENTCLOUD_SESSION_TOKEN"
)

// tkeVars are the variables TKE's OIDC pod identity sets; the SDK's
// DefaultTkeOIDCRoleArnProvider needs all four.
var tkeVars = []string{"TKE_REGION", "TKE_PROVIDER_ID", "TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_ROLE_ARN"}

// CredentialFromEnvironment finds the API credential, first match wins:
//
//  1. TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY: a static key, with
//     TENCENTCLOUD_SESSION_TOKEN as its STS token when set (the SDK itself
//     ignores that variable).
//  2. TKE_REGION, TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE, TKE_ROLE_ARN:
//     TKE OIDC role assumption, refreshed by the SDK before expiry. This
//     calls STS once now.
//  3. The SDK chain: the profile file (TENCENTCLOUD_CREDENTIALS_FILE, else
//     ~/.tencentcloud/credentials), then the CVM instance role from the
//     metadata server. The SDK queries the metadata server without a
//     timeout.
//
// Setting only some variables of a source is an error rather than a silent
// fall-through to the next source. Errors name the sources and variables,
// never their values.
func CredentialFromEnvironment() (common.CredentialIface, error) {
	_, idSet := os.LookupEnv(EnvSecretID)
	_, keySet := os.LookupEnv(EnvSecretKey)
	if idSet || keySet {
		id, key := os.Getenv(EnvSecretID), os.Getenv(EnvSecretKey)
		if id == "" || key == "" {
			return nil, fmt.Errorf("submit: credential: %s and %s must both be set and non-empty", EnvSecretID, EnvSecretKey)
		}
		if token := os.Getenv(EnvSessionToken); token != "" {
			return common.NewTokenCredential(id, key, token), nil
		}
		return common.NewCredential(id, key), nil
	}

	var tkeSet, tkeMissing []string
	for _, v := range tkeVars {
		if os.Getenv(v) != "" {
			tkeSet = append(tkeSet, v)
		} else {
			tkeMissing = append(tkeMissing, v)
		}
	}
	if len(tkeSet) > 0 {
		if len(tkeMissing) > 0 {
			return nil, fmt.Errorf("submit: credential: TKE OIDC is partly configured, missing %s", strings.Join(tkeMissing, ", "))
		}
		provider, err := common.DefaultTkeOIDCRoleArnProvider()
		if err != nil {
			return nil, fmt.Errorf("submit: credential: TKE OIDC: %w", err)
		}
		cred, err := provider.GetCredential()
		if err != nil {
			return nil, fmt.Errorf("submit: credential: TKE OIDC role assumption: %w", err)
		}
		return cred, nil
	}

	cred, err := common.DefaultProviderChain().GetCredential()
	if err == nil && cred == nil {
		err = errors.New("provider returned no credential")
	}
	if err != nil {
		return nil, fmt.Errorf("submit: no credential found (tried %s/%s, TKE OIDC %s, profile file %s or ~/.tencentcloud/credentials, CVM instance role): %w",
			EnvSecretID, EnvSecretKey, strings.Join(tkeVars, "/"), common.EnvCredentialFile, err)
	}
	return cred, nil
}
